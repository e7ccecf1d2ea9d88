//! Files: NumPy arrays, safetensors weights, atomic writes, and the all-or-nothing outputs of a
//! command.

pub mod atomic;
pub mod npy;
pub mod npz;
pub mod outputs;
pub mod picture;
pub mod safetensors;

/// Writes `text` to stdout and flushes it; a failure (a closed pipe, a full disk) is an error
/// whose message is one line, where `println!` would panic.
pub fn print_stdout(text: &str) -> crate::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            let msg = e.to_string();
            let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
            crate::Error::Invalid(format!("stdout: cannot write the results ({msg})"))
        })
}
