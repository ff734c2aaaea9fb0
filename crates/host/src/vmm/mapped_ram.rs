//! A saved VM as a delta over the memory it was restored from.
//!
//! QEMU's `mapped-ram` migration format puts every page of a RAM block at
//! a fixed offset of the file, with a bitmap of the pages present; pages
//! not present are left alone when the file is loaded. That makes a delta
//! out of a full save: a page equal to the snapshot's is dropped from the
//! bitmap and its bytes punched out of the file (the VM it is loaded into
//! maps the snapshot's memory, so it has that page already), and a page
//! that became zero where the snapshot's is not is marked present over a
//! hole (a hole reads as zeros). What remains on disk is what the VM
//! changed, plus its device state.
//!
//! The layout (QEMU's `docs/devel/migration/mapped-ram.rst` and
//! `migration/ram.c`): the stream header, the `ram` section's start, the
//! total RAM size with the `MEM_SIZE` flag, then per block its name, its
//! used length and a mapped-ram header (version, page size, bitmap offset,
//! pages offset), the bitmap after the header, the pages from the next
//! 1 MiB boundary, and the next block after the last page. Anything else
//! is refused: a file this module does not understand is never changed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

#[derive(Debug, thiserror::Error)]
pub enum MappedRamError {
    #[error("reading or writing the saved state: {0}")]
    Io(#[from] std::io::Error),
    #[error("the saved state is not in the layout expected: {0}")]
    Layout(String),
}

const MAGIC: &[u8; 4] = b"QEVM";
const STREAM_VERSION: u32 = 3;
const SECTION_START: u8 = 0x01;
const FLAG_MEM_SIZE: u64 = 0x04;
const HEADER_VERSION: u32 = 1;
/// version (be32), page size, bitmap offset, pages offset (be64 each).
const HEADER_LEN: u64 = 4 + 8 + 8 + 8;
const ALIGNMENT: u64 = 1 << 20;
pub const PAGE: u64 = 4096;
/// How far into the file the `ram` section may start.
const SEARCH: usize = 64 << 10;

/// One RAM block of a mapped-ram file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    pub used_length: u64,
    pub bitmap_offset: u64,
    pub pages_offset: u64,
}

impl Block {
    fn pages(&self) -> u64 {
        self.used_length / PAGE
    }

    /// Bytes of its bitmap: whole 64-bit words, as QEMU writes them.
    fn bitmap_len(&self) -> u64 {
        self.pages().div_ceil(64) * 8
    }
}

/// The RAM blocks of the mapped-ram file `file`.
pub fn blocks(file: &File) -> Result<Vec<Block>, MappedRamError> {
    let layout = |what: String| MappedRamError::Layout(what);
    let mut head = vec![0u8; SEARCH];
    let len = read_up_to(file, &mut head, 0)?;
    head.truncate(len);
    if head.len() < 8 || &head[..4] != MAGIC || be32(&head[4..8]) != STREAM_VERSION {
        return Err(layout("no QEMU migration stream header".into()));
    }
    // The section start of `ram`: the marker, a section id, the name.
    let needle = b"\x03ram";
    let at = head
        .windows(needle.len())
        .enumerate()
        .find(|(i, w)| *w == needle && *i >= 5 && head[i - 5] == SECTION_START)
        .map(|(i, _)| i)
        .ok_or_else(|| layout("no ram section".into()))?;
    // Name, instance id and version id, then the size with its flag.
    let mut offset = (at + needle.len() + 8) as u64;
    let sized = read_be64(file, offset)?;
    if sized & (PAGE - 1) != FLAG_MEM_SIZE {
        return Err(layout(format!("ram section starts with {sized:#x}")));
    }
    let total = sized & !(PAGE - 1);
    offset += 8;
    let mut blocks = Vec::new();
    let mut seen = 0u64;
    while seen < total {
        let mut len = [0u8; 1];
        file.read_exact_at(&mut len, offset)?;
        let mut name = vec![0u8; len[0] as usize];
        file.read_exact_at(&mut name, offset + 1)?;
        let name =
            String::from_utf8(name).map_err(|_| layout("a block name is not UTF-8".into()))?;
        offset += 1 + len[0] as u64;
        let used_length = read_be64(file, offset)?;
        offset += 8;
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, offset)?;
        let block = Block {
            name,
            used_length,
            bitmap_offset: be64(&header[12..20]),
            pages_offset: be64(&header[20..28]),
        };
        let fits = be32(&header[..4]) == HEADER_VERSION
            && be64(&header[4..12]) == PAGE
            && used_length % PAGE == 0
            && block.bitmap_offset == offset + HEADER_LEN
            && block.pages_offset % ALIGNMENT == 0
            && block.pages_offset >= block.bitmap_offset + block.bitmap_len();
        if !fits {
            return Err(layout(format!("block {:?}: {header:02x?}", block.name)));
        }
        seen += used_length;
        offset = block.pages_offset + used_length;
        blocks.push(block);
    }
    if seen != total {
        return Err(layout(format!("blocks of {seen} bytes in {total}")));
    }
    Ok(blocks)
}

/// What [`reduce`] kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reduced {
    /// Pages of the block that differ from the base.
    pub pages: u64,
}

/// Makes block `name` of the mapped-ram file `file` a delta over `base`,
/// the memory it will be loaded onto: only pages that differ from `base`
/// stay present (zero pages as holes).
pub fn reduce(file: &File, base: &File, name: &str) -> Result<Reduced, MappedRamError> {
    let block = blocks(file)?
        .into_iter()
        .find(|b| b.name == name)
        .ok_or_else(|| MappedRamError::Layout(format!("no block {name:?}")))?;
    let mut bitmap = vec![0u8; block.bitmap_len() as usize];
    file.read_exact_at(&mut bitmap, block.bitmap_offset)?;
    const CHUNK: u64 = 256;
    let zero = [0u8; PAGE as usize];
    let mut saved = vec![0u8; (CHUNK * PAGE) as usize];
    let mut old = vec![0u8; (CHUNK * PAGE) as usize];
    let mut kept = 0;
    let mut holes = Holes::new(file);
    let pages = block.pages();
    let mut first = 0;
    while first < pages {
        let count = CHUNK.min(pages - first);
        let bytes = (count * PAGE) as usize;
        let any = (first..first + count).any(|p| bit(&bitmap, p));
        if any {
            file.read_exact_at(&mut saved[..bytes], block.pages_offset + first * PAGE)?;
        }
        let got = read_up_to(base, &mut old[..bytes], first * PAGE)?;
        old[got..bytes].fill(0);
        for i in 0..count {
            let page = first + i;
            let range = (i * PAGE) as usize..((i + 1) * PAGE) as usize;
            let present = bit(&bitmap, page);
            let now: &[u8] = if present {
                &saved[range.clone()]
            } else {
                &zero
            };
            let differs = now != &old[range];
            set_bit(&mut bitmap, page, differs);
            kept += u64::from(differs);
            if present && (!differs || now == zero) {
                holes.punch(block.pages_offset + page * PAGE)?;
            }
        }
        first += count;
    }
    holes.flush()?;
    file.write_all_at(&bitmap, block.bitmap_offset)?;
    Ok(Reduced { pages: kept })
}

/// Runs of pages to punch out of a file, punched a run at a time.
struct Holes<'a> {
    file: &'a File,
    run: Option<(u64, u64)>,
}

impl<'a> Holes<'a> {
    fn new(file: &'a File) -> Self {
        Self { file, run: None }
    }

    fn punch(&mut self, offset: u64) -> std::io::Result<()> {
        match &mut self.run {
            Some((start, len)) if *start + *len == offset => *len += PAGE,
            _ => {
                self.flush()?;
                self.run = Some((offset, PAGE));
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let Some((start, len)) = self.run.take() else {
            return Ok(());
        };
        // SAFETY: fallocate on an open descriptor; no memory is passed.
        let done = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                len as libc::off_t,
            )
        };
        if done < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// QEMU's bitmap is an array of host `unsigned long`s: little-endian
/// 64-bit words on x86-64, so bit `n` is bit `n % 8` of byte `n / 8`.
fn bit(bitmap: &[u8], n: u64) -> bool {
    bitmap[(n / 8) as usize] & (1 << (n % 8)) != 0
}

fn set_bit(bitmap: &mut [u8], n: u64, on: bool) {
    let byte = &mut bitmap[(n / 8) as usize];
    if on {
        *byte |= 1 << (n % 8);
    } else {
        *byte &= !(1 << (n % 8));
    }
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

fn read_be64(file: &File, offset: u64) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(u64::from_be_bytes(bytes))
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"))
}

fn be64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A block to lay out: its name, its pages, and the pages present with
    /// their fill byte.
    type Layout<'a> = (&'a str, u64, &'a [(u64, u8)]);

    /// A mapped-ram file as QEMU lays it out.
    fn saved(blocks: &[Layout]) -> (tempfile::NamedTempFile, Vec<Block>) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let f = file.as_file();
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&STREAM_VERSION.to_be_bytes());
        // A configuration section, as QEMU writes one first.
        head.extend_from_slice(b"\x07\x00\x00\x00\x0bpc-q35-10.0");
        head.push(SECTION_START);
        head.extend_from_slice(&1u32.to_be_bytes());
        head.extend_from_slice(b"\x03ram");
        head.extend_from_slice(&0u32.to_be_bytes());
        head.extend_from_slice(&4u32.to_be_bytes());
        let total: u64 = blocks.iter().map(|b| b.1 * PAGE).sum();
        head.extend_from_slice(&(total | FLAG_MEM_SIZE).to_be_bytes());
        f.write_all_at(&head, 0).unwrap();
        let mut offset = head.len() as u64;
        let mut made = Vec::new();
        for (name, pages, present) in blocks {
            let mut entry = vec![name.len() as u8];
            entry.extend_from_slice(name.as_bytes());
            entry.extend_from_slice(&(pages * PAGE).to_be_bytes());
            let bitmap_offset = offset + entry.len() as u64 + HEADER_LEN;
            let bitmap_len = pages.div_ceil(64) * 8;
            let pages_offset = (bitmap_offset + bitmap_len).next_multiple_of(ALIGNMENT);
            entry.extend_from_slice(&HEADER_VERSION.to_be_bytes());
            entry.extend_from_slice(&PAGE.to_be_bytes());
            entry.extend_from_slice(&bitmap_offset.to_be_bytes());
            entry.extend_from_slice(&pages_offset.to_be_bytes());
            f.write_all_at(&entry, offset).unwrap();
            let mut bitmap = vec![0u8; bitmap_len as usize];
            for (page, fill) in *present {
                set_bit(&mut bitmap, *page, true);
                f.write_all_at(&[*fill; PAGE as usize], pages_offset + page * PAGE)
                    .unwrap();
            }
            f.write_all_at(&bitmap, bitmap_offset).unwrap();
            offset = pages_offset + pages * PAGE;
            made.push(Block {
                name: name.to_string(),
                used_length: pages * PAGE,
                bitmap_offset,
                pages_offset,
            });
        }
        // Device state follows the last block.
        f.write_all_at(b"\x04devices", offset).unwrap();
        (file, made)
    }

    fn base(pages: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        for (i, fill) in pages.iter().enumerate() {
            if *fill != 0 {
                file.as_file()
                    .write_all_at(&[*fill; PAGE as usize], i as u64 * PAGE)
                    .unwrap();
            }
        }
        file.as_file().set_len(pages.len() as u64 * PAGE).unwrap();
        file
    }

    fn page(file: &File, block: &Block, n: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; PAGE as usize];
        file.read_exact_at(&mut bytes, block.pages_offset + n * PAGE)
            .unwrap();
        bytes
    }

    #[test]
    fn blocks_are_found_where_qemu_puts_them() {
        let (file, made) = saved(&[("mem", 130, &[(0, 1)]), ("pc.bios", 2, &[(1, 9)])]);
        assert_eq!(blocks(file.as_file()).unwrap(), made);
    }

    #[test]
    fn only_pages_that_differ_from_the_base_stay() {
        // Pages: 0 unchanged, 1 changed, 2 zeroed where the base had data,
        // 3 zero in both, 4 new data over a zero page of the base.
        let (file, made) = saved(&[
            ("mem", 5, &[(0, 1), (1, 7), (4, 4)]),
            ("pc.bios", 1, &[(0, 9)]),
        ]);
        let base = base(&[1, 2, 3, 0, 0]);
        let f = file.as_file();
        let before = f.metadata().unwrap().blocks();
        let reduced = reduce(f, base.as_file(), "mem").unwrap();
        assert_eq!(reduced, Reduced { pages: 3 });
        let mem = &made[0];
        let mut bitmap = vec![0u8; 8];
        f.read_exact_at(&mut bitmap, mem.bitmap_offset).unwrap();
        let present: Vec<u64> = (0..5).filter(|p| bit(&bitmap, *p)).collect();
        assert_eq!(present, [1, 2, 4]);
        assert_eq!(page(f, mem, 1), vec![7u8; PAGE as usize]);
        assert_eq!(page(f, mem, 2), vec![0u8; PAGE as usize]);
        assert_eq!(page(f, mem, 4), vec![4u8; PAGE as usize]);
        // The unchanged page is gone from the disk; the other block and
        // the device state are untouched.
        assert_eq!(page(f, mem, 0), vec![0u8; PAGE as usize]);
        assert!(f.metadata().unwrap().blocks() < before);
        assert_eq!(page(f, &made[1], 0), vec![9u8; PAGE as usize]);
        let mut devices = [0u8; 8];
        f.read_exact_at(&mut devices, made[1].pages_offset + PAGE)
            .unwrap();
        assert_eq!(&devices, b"\x04devices");
    }

    #[test]
    fn a_file_of_another_layout_is_refused_unchanged() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file()
            .write_all_at(b"QEVM\x00\x00\x00\x03nothing", 0)
            .unwrap();
        let base = base(&[1]);
        assert!(matches!(
            reduce(file.as_file(), base.as_file(), "mem"),
            Err(MappedRamError::Layout(_))
        ));
        let (file, _) = saved(&[("pc.ram", 1, &[(0, 1)])]);
        assert!(matches!(
            reduce(file.as_file(), base.as_file(), "mem"),
            Err(MappedRamError::Layout(_))
        ));
    }
}
