//! Compiles the CUDA kernels of `kernels/` twice (docs/devices.md):
//!
//! - For the host, always: against the emulator's header (`kernels/emu/emu.h`), into the static
//!   library `dydiff_emu`, so that `cargo test` runs the same kernel sources on any machine. For
//!   every `kernels/NAME.cu` (and the emulator's own test kernels, `kernels/emu/selftest.cu`) it
//!   writes a translation unit that includes the source and lists its kernels — every
//!   `extern "C" __global__ void KERNEL(` — in a table (`kernels/emu/registry.h`), and one
//!   function, `dydiff_emu_find`, that looks a kernel up by name across all tables. This needs a
//!   C++ compiler (the `cc` crate finds it).
//! - For the GPU, with the `cuda` feature: with `nvcc` (from `NVCC`, then `CUDA_HOME` or
//!   `CUDA_PATH`, then `PATH`) into one fatbin, `OUT_DIR/dydiff.fatbin`, holding machine code for
//!   every architecture of `DYDIFF_CUDA_ARCHS` (default `80;90`) and PTX of the highest; the crate
//!   embeds it (`cfg(dydiff_kernels)`). Without `nvcc` the build goes on with a cargo warning and
//!   the binary says at run time that it holds no CUDA kernels; a kernel that does not compile
//!   stops the build with nvcc's message.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    sources.push(kernels.join("emu").join("selftest.cu"));

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .include(kernels.join("emu"))
        .include(&kernels)
        .flag_if_supported("-U_FORTIFY_SOURCE")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unknown-pragmas")
        .warnings(true)
        .file(kernels.join("emu").join("emu.cpp"));

    let mut find = String::from("#include \"registry.h\"\n#include <cstring>\n\n");
    let mut lookups = String::new();
    for (i, src) in sources.iter().enumerate() {
        let text = std::fs::read_to_string(src).unwrap_or_default();
        let names = kernel_names(&text);
        let unit = out.join(format!("emu_{i}.cpp"));
        let mut body = format!(
            "#include \"emu.h\"\n#include \"registry.h\"\n#include \"{}\"\n\nstatic const ::emu::Kernel kTable[] = {{\n",
            src.display()
        );
        for n in &names {
            let _ = writeln!(body, "    EMU_KERNEL({n}),");
        }
        if names.is_empty() {
            body.push_str("    {nullptr, 0, nullptr, nullptr},\n");
        }
        let _ = write!(
            body,
            "}};\n\nextern \"C\" const ::emu::Kernel* dydiff_emu_table_{i}(size_t* n) {{\n    *n = {};\n    return kTable;\n}}\n",
            names.len()
        );
        write_if_changed(&unit, &body);
        build.file(&unit);
        let _ = writeln!(
            find,
            "extern \"C\" const ::emu::Kernel* dydiff_emu_table_{i}(size_t* n);"
        );
        let _ = writeln!(lookups, "        dydiff_emu_table_{i},");
    }
    let _ = write!(
        find,
        "\nextern \"C\" const ::emu::Kernel* dydiff_emu_find(const char* name) {{\n    using Table = const ::emu::Kernel* (*)(size_t*);\n    static const Table tables[] = {{\n{lookups}    }};\n    for (Table t : tables) {{\n        size_t n = 0;\n        const ::emu::Kernel* k = t(&n);\n        for (size_t i = 0; i < n; ++i)\n            if (std::strcmp(k[i].name, name) == 0) return &k[i];\n    }}\n    return nullptr;\n}}\n"
    );
    let find_unit = out.join("emu_find.cpp");
    write_if_changed(&find_unit, &find);
    build.file(&find_unit);
    build.compile("dydiff_emu");

    println!("cargo::rustc-check-cfg=cfg(dydiff_kernels)");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    println!("cargo:rerun-if-env-changed=DYDIFF_CUDA_ARCHS");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let archs = std::env::var("DYDIFF_CUDA_ARCHS").unwrap_or_else(|_| "80;90".into());
        println!("cargo:rustc-env=DYDIFF_CUDA_ARCHS={archs}");
        let device_sources: Vec<&PathBuf> = sources
            .iter()
            .filter(|p| p.parent() == Some(kernels.as_path()))
            .collect();
        match find_nvcc() {
            None => println!(
                "cargo:warning=nvcc not found (NVCC, CUDA_HOME/CUDA_PATH, PATH): building without CUDA kernels; --device cuda will say so"
            ),
            Some(nvcc) => {
                compile_fatbin(&nvcc, &archs, &device_sources, &kernels, &out);
                println!("cargo:rustc-cfg=dydiff_kernels");
            }
        }
    }
}

/// `nvcc` from `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then `PATH`; only one that runs.
fn find_nvcc() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("NVCC") {
        candidates.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            candidates.push(PathBuf::from(p).join("bin").join("nvcc"));
        }
    }
    candidates.push(PathBuf::from("nvcc"));
    candidates.into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// One translation unit including every kernel source, compiled to `OUT_DIR/dydiff.fatbin` with
/// machine code for each architecture of `archs` (`80;90`) and PTX of the highest.
fn compile_fatbin(nvcc: &Path, archs: &str, sources: &[&PathBuf], kernels: &Path, out: &Path) {
    let mut list: Vec<u32> = archs
        .split([';', ','])
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    list.sort_unstable();
    list.dedup();
    if list.is_empty() {
        eprintln!("DYDIFF_CUDA_ARCHS: expected compute capabilities like 80;90, found {archs:?}");
        std::process::exit(1);
    }
    let unit = out.join("kernels_all.cu");
    let text: String = sources
        .iter()
        .map(|s| format!("#include \"{}\"\n", s.display()))
        .collect();
    write_if_changed(&unit, &text);
    let mut cmd = std::process::Command::new(nvcc);
    cmd.arg("-fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        .arg("-I")
        .arg(kernels)
        .arg("-o")
        .arg(out.join("dydiff.fatbin"));
    for a in &list {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let top = list[list.len() - 1];
    cmd.arg(format!("-gencode=arch=compute_{top},code=compute_{top}"));
    cmd.arg(&unit);
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "nvcc failed on the kernels:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", nvcc.display());
            std::process::exit(1);
        }
    }
}

/// The names of the `extern "C" __global__ void [__launch_bounds__(…)] NAME(` kernels in a
/// source, in order.
fn kernel_names(text: &str) -> Vec<String> {
    const OPEN: &str = "extern \"C\" __global__ void ";
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        rest = rest[i + OPEN.len()..].trim_start();
        if let Some(after) = rest.strip_prefix("__launch_bounds__(") {
            rest = after[after.find(')').map_or(0, |j| j + 1)..].trim_start();
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

/// Writes `text` unless the file already holds it (so that cc does not recompile it).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| {
            println!("cargo:warning=cannot write {}: {e}", path.display());
        });
    }
}
