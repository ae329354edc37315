//! The memory-mapped TPACKET_V3 receive ring (kernel Documentation/networking/packet_mmap.rst).
//!
//! The ring is a sequence of blocks. The kernel fills the current block with frames and
//! hands it to user space (`TP_STATUS_USER` in the block header) when it is full or when the
//! block timeout expires; user space visits the frames in place and hands the block back
//! (`TP_STATUS_KERNEL`). Blocks are handed over in order, so user space only ever looks at
//! the next block it expects.

use super::socket::PacketSocket;
use super::{Frame, RingConfig};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Offset of the `sockaddr_ll` after a `tpacket3_hdr`: `TPACKET_ALIGN(sizeof(struct
/// tpacket3_hdr))` (include/uapi/linux/if_packet.h).
const SOCKADDR_LL_OFFSET: usize = (size_of::<libc::tpacket3_hdr>() + libc::TPACKET_ALIGNMENT - 1)
    & !(libc::TPACKET_ALIGNMENT - 1);

/// A mapped TPACKET_V3 ring.
#[derive(Debug)]
pub(crate) struct Ring {
    base: NonNull<u8>,
    len: usize,
    block_size: usize,
    block_count: usize,
    /// The next block user space expects.
    current: usize,
}

// SAFETY: the mapping is owned by this value alone (unmapped on drop) and only accessed
// through `&mut self`; the kernel side is synchronised through the block status words.
unsafe impl Send for Ring {}

impl Ring {
    /// Configures the socket for TPACKET_V3 and maps its receive ring.
    pub(crate) fn map(socket: &PacketSocket, config: &RingConfig) -> io::Result<Ring> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
        if config.block_size == 0
            || !config.block_size.is_multiple_of(page)
            || !config.block_size.is_power_of_two()
        {
            return Err(invalid(
                "ring block size must be a power of two and a multiple of the page size",
            ));
        }
        if config.frame_size < 256
            || !config
                .frame_size
                .is_multiple_of(libc::TPACKET_ALIGNMENT as u32)
            || !config.block_size.is_multiple_of(config.frame_size)
        {
            return Err(invalid(
                "ring frame size must be a multiple of 16 that divides the block size",
            ));
        }
        if config.block_count == 0 {
            return Err(invalid("the ring needs at least one block"));
        }
        let len = (config.block_size as usize)
            .checked_mul(config.block_count as usize)
            .ok_or_else(|| invalid("ring too large"))?;
        socket.set_tpacket_v3()?;
        let request = libc::tpacket_req3 {
            tp_block_size: config.block_size,
            tp_block_nr: config.block_count,
            tp_frame_size: config.frame_size,
            tp_frame_nr: (len / config.frame_size as usize) as u32,
            tp_retire_blk_tov: config
                .block_timeout
                .as_millis()
                .clamp(1, u128::from(u32::MAX)) as u32,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        socket.set_rx_ring(&request)?;
        // SAFETY: mapping `len` bytes of the packet socket's ring at offset 0, as
        // packet_mmap.rst prescribes after PACKET_RX_RING; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                socket.raw(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Ring {
            base,
            len,
            block_size: config.block_size as usize,
            block_count: config.block_count as usize,
            current: 0,
        })
    }

    /// Blocks in the ring.
    pub(crate) fn block_count(&self) -> usize {
        self.block_count
    }

    fn block(&self, index: usize) -> *mut libc::tpacket_block_desc {
        // SAFETY: `index < block_count`, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(index * self.block_size).cast() }
    }

    fn status(&self, index: usize) -> &AtomicU32 {
        let block = self.block(index);
        // SAFETY: the block header lies inside the mapping, `block_status` is a 4-byte
        // aligned u32 that the kernel and we access concurrently; it lives as long as `self`.
        unsafe { AtomicU32::from_ptr(&raw mut (*block).hdr.bh1.block_status) }
    }

    /// True when the next block belongs to user space.
    pub(crate) fn next_block_ready(&self) -> bool {
        // Acquire pairs with the kernel's smp_wmb before it sets TP_STATUS_USER, so the
        // frames written before are visible.
        self.status(self.current).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Visits every frame of the next block in place, then returns the block to the kernel
    /// (also when `visit` panics). Returns the number of frames visited.
    pub(crate) fn visit_next_block(&mut self, visit: &mut dyn FnMut(Frame<'_>)) -> usize {
        struct ReturnToKernel<'a>(&'a AtomicU32);
        impl Drop for ReturnToKernel<'_> {
            fn drop(&mut self) {
                // Release: our reads of the block happen before the kernel may reuse it.
                self.0.store(libc::TP_STATUS_KERNEL, Ordering::Release);
            }
        }
        let index = self.current;
        self.current = (self.current + 1) % self.block_count;
        let block = self.block(index);
        let _guard = ReturnToKernel(self.status(index));
        // SAFETY: the block belongs to user space (TP_STATUS_USER was seen with Acquire), so
        // the kernel does not write it until the guard hands it back. Every offset read from
        // the kernel is checked against the block bounds before it is dereferenced.
        unsafe {
            let header = &(*block).hdr.bh1;
            let block_start = block.cast::<u8>();
            let mut offset = header.offset_to_first_pkt as usize;
            let mut visited = 0usize;
            for _ in 0..header.num_pkts {
                if offset + SOCKADDR_LL_OFFSET + size_of::<libc::sockaddr_ll>() > self.block_size {
                    break;
                }
                let frame = block_start.add(offset).cast::<libc::tpacket3_hdr>();
                let frame_header = std::ptr::read_unaligned(frame);
                let address = std::ptr::read_unaligned(
                    block_start
                        .add(offset + SOCKADDR_LL_OFFSET)
                        .cast::<libc::sockaddr_ll>(),
                );
                let mac = offset + usize::from(frame_header.tp_mac);
                let snap = frame_header.tp_snaplen as usize;
                if mac + snap > self.block_size {
                    break;
                }
                let data = std::slice::from_raw_parts(block_start.add(mac), snap);
                visit(Frame {
                    sec: u64::from(frame_header.tp_sec),
                    nsec: u64::from(frame_header.tp_nsec),
                    packet_type: address.sll_pkttype,
                    hardware_type: address.sll_hatype,
                    data,
                });
                visited += 1;
                if frame_header.tp_next_offset == 0 {
                    break;
                }
                offset += frame_header.tp_next_offset as usize;
            }
            visited
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping made in `map`, unmapped exactly once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}
