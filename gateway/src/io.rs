//! Small I/O helpers shared by the client and backend sides.

use std::io::IoSlice;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes a frame's short prefix and its body with as few syscalls as the
/// writer allows: through the buffer when small, as one `writev` when large,
/// never by copying a large body into the buffer.
pub(crate) async fn write_prefixed<W: AsyncWrite + Unpin>(
    wr: &mut W,
    prefix: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let mut storage = [IoSlice::new(prefix), IoSlice::new(body)];
    let mut slices: &mut [IoSlice<'_>] = &mut storage;
    while !slices.is_empty() {
        let n = wr.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
