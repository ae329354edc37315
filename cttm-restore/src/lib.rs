//! cttm-restore
