//! pcap and pcapng files (written by the pcap helper).
