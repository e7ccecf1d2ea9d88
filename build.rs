//! Compiles the CUDA kernels of `kernels/` for the host, against the emulator's header
//! (`kernels/emu/emu.h`), into the static library `dydiff_emu`: the same kernel sources the GPU
//! runs, run by `cargo test` on any machine (DESIGN.md, "The CUDA backend").
//!
//! For every `kernels/NAME.cu` (and the emulator's own test kernels, `kernels/emu/selftest.cu`)
//! it writes a translation unit that includes the source and lists its kernels — every
//! `extern "C" __global__ void KERNEL(` — in a table (`kernels/emu/registry.h`), and one function,
//! `dydiff_emu_find`, that looks a kernel up by name across all tables.
//!
//! It never panics on a missing tool: without a C++ compiler the build fails with the compiler's
//! own message from the `cc` crate, which is the one dependency of the build.

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
}

/// The names of the `extern "C" __global__ void NAME(` kernels in a source, in order.
fn kernel_names(text: &str) -> Vec<String> {
    const OPEN: &str = "extern \"C\" __global__ void ";
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        rest = &rest[i + OPEN.len()..];
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
