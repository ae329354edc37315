//! cttm-capture
