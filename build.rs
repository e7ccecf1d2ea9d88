//! Compiles the CUDA kernels of `kernels/` twice (docs/devices.md):
//!
//! - For the host, always: against the emulator's header (`kernels/emu/emu.h`), into the static
//!   library `dydiff_emu`, so that `cargo test` runs the same kernel sources on any machine. For
//!   every `kernels/NAME.cu` (and the emulator's own test kernels, `kernels/emu/selftest.cu`) it
//!   writes a translation unit that includes the source and lists its kernels — every
//!   `extern "C" __global__ void KERNEL(` — in a table (`kernels/emu/registry.h`), and one
//!   function, `dydiff_emu_find`, that looks a kernel up by name across all tables. Each entry
//!   also carries what the GPU would hold a launch to: the kernel's `__launch_bounds__` (its most
//!   threads per block) and, where nvcc built the kernels, the registers per thread and static
//!   shared memory of its machine code (the most over the architectures, from `cuobjdump
//!   -res-usage`; the emulator's own test kernels compiled to a cubin for this alone), so that
//!   the emulator refuses a launch the GPU would. This needs a C++ compiler (the `cc` crate
//!   finds it). The device kernels' names also become Rust constants (`OUT_DIR/kernel_names.rs`,
//!   `backend::cuda::kernels::names`), so a launcher naming a kernel that does not exist does not
//!   compile; and their integer `#define`s (tile sizes, threads per block) Rust constants too
//!   (`OUT_DIR/kernel_constants.rs`, `backend::cuda::kernels::consts`), defined once for both
//!   sides.
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

    // the device's kernel sources and headers, and the emulator's own test kernels
    let device = files_with_extension(&kernels, "cu");
    let headers = files_with_extension(&kernels, "cuh");
    let mut sources = device.clone();
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

    // the GPU's build first: the emulator's tables carry its resource figures
    println!("cargo::rustc-check-cfg=cfg(dydiff_kernels)");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    println!("cargo:rerun-if-env-changed=DYDIFF_CUDA_ARCHS");
    let mut resources = Resources::new();
    let mut fatbin_built = None;
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let archs = std::env::var("DYDIFF_CUDA_ARCHS").unwrap_or_else(|_| "80;90".into());
        println!("cargo:rustc-env=DYDIFF_CUDA_ARCHS={archs}");
        match find_nvcc() {
            None => println!(
                "cargo:warning=nvcc not found (NVCC, CUDA_HOME/CUDA_PATH, PATH): building without CUDA kernels; --device cuda will say so"
            ),
            Some(nvcc) => {
                let fatbin = out.join("dydiff.fatbin");
                compile_fatbin(&nvcc, &archs, &device, &kernels, &fatbin);
                println!("cargo:rustc-cfg=dydiff_kernels");
                let selftest = out.join("selftest.cubin");
                let top = compile_selftest(&nvcc, &kernels, &selftest);
                resources = read_resources(&nvcc, &[(&fatbin, 0), (&selftest, top)]);
                fatbin_built = Some(fatbin);
            }
        }
    }

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
        for (n, bounds) in &names {
            let (registers, shared) = resources.get(n.as_str()).copied().unwrap_or((0, 0));
            let bounds = bounds.as_deref().unwrap_or("0");
            let _ = writeln!(
                body,
                "    EMU_KERNEL({n}, {bounds}, {registers}, {shared}),"
            );
        }
        if names.is_empty() {
            body.push_str("    {nullptr, 0, nullptr, nullptr, 0, 0, 0},\n");
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
    // the device kernels' names and the integer `#define`s of their sources and headers (tile
    // sizes, threads per block) as Rust constants (src/backend/cuda/kernels.rs: `names`, `consts`)
    let mut consts = String::from(
        "// Generated by build.rs from the `extern \"C\" __global__` kernels of kernels/*.cu.\n",
    );
    let mut defines = String::from(
        "// Generated by build.rs from the integer `#define`s of kernels/*.cu and kernels/*.cuh.\n",
    );
    for src in device.iter().chain(&headers) {
        let file = src.file_name().map(|f| f.to_string_lossy().into_owned());
        let file = file.as_deref().unwrap_or("?");
        let text = std::fs::read_to_string(src).unwrap_or_default();
        for (n, _) in kernel_names(&text) {
            let _ = writeln!(
                consts,
                "/// `{n}` (kernels/{file}).\npub const {}: &str = \"{n}\";",
                n.to_uppercase()
            );
        }
        for (name, value) in integer_defines(&text) {
            let _ = writeln!(
                defines,
                "/// `{name}` (kernels/{file}).\npub const {name}: usize = {value};"
            );
        }
    }
    write_if_changed(&out.join("kernel_names.rs"), &consts);
    write_if_changed(&out.join("kernel_constants.rs"), &defines);

    let find_unit = out.join("emu_find.cpp");
    write_if_changed(&find_unit, &find);
    build.file(&find_unit);
    build.compile("dydiff_emu");

    if let Some(fatbin) = fatbin_built {
        build_standin(&out, &kernels, &fatbin, &archs_built());
    }
}

/// The stand-in driver library for tests (`kernels/emu/libcuda.cpp`, docs/devices.md, "The
/// stand-in driver"): `OUT_DIR/standin/libcuda.so`, the emulator linked in whole and only the
/// `cu*` entry points exported (`kernels/emu/libcuda.map`), told the size and FNV-1a hash of the
/// fatbin it is to accept; and `OUT_DIR/standin-partial/libcuda.so`, the same without
/// `cuGraphLaunch`, for the test of a driver library that lacks an entry point. The folders
/// become `DYDIFF_STANDIN_DIR` and `DYDIFF_STANDIN_PARTIAL_DIR` for the crate's tests. Linux
/// only, and only where the fatbin holds sm_90 (the device the stand-in models); a failure is a
/// cargo warning (the stand-in is for tests, never part of what is built for use), and leaves no
/// earlier build's library behind.
fn build_standin(out: &Path, kernels: &Path, fatbin: &Path, archs: &[u32]) {
    for folder in ["standin", "standin-partial"] {
        let _ = std::fs::remove_dir_all(out.join(folder));
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    if !archs.contains(&90) {
        println!("cargo:warning=no stand-in driver library: DYDIFF_CUDA_ARCHS has no sm_90, the device it models");
        return;
    }
    let emu = kernels.join("emu");
    let image = std::fs::read(fatbin).unwrap_or_default();
    let fnv = image.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let object = out.join("libcuda_standin.o");
    let mut compile = compiler.to_command();
    compile
        .args(["-c", "-fPIC", "-O2", "-std=c++17", "-fvisibility=hidden"])
        .arg("-I")
        .arg(&emu)
        .arg(format!("-DDYDIFF_FATBIN_BYTES={}ull", image.len()))
        .arg(format!("-DDYDIFF_FATBIN_FNV={fnv}ull"))
        .arg(emu.join("libcuda.cpp"))
        .arg("-o")
        .arg(&object);
    let partial_map = out.join("libcuda_partial.map");
    write_if_changed(
        &partial_map,
        "{\n  global: cu*;\n  local: cuGraphLaunch; *;\n};\n",
    );
    let link = |folder: &str, map: &Path| {
        let dir = out.join(folder);
        let _ = std::fs::create_dir_all(&dir);
        let mut cmd = compiler.to_command();
        cmd.arg("-shared")
            .arg(&object)
            .arg("-Wl,--whole-archive")
            .arg(out.join("libdydiff_emu.a"))
            .arg("-Wl,--no-whole-archive")
            .arg(format!("-Wl,--version-script={}", map.display()))
            .args([
                "-Wl,-soname,libcuda.so.1",
                "-Wl,--no-undefined",
                "-lpthread",
                "-o",
            ])
            .arg(dir.join("libcuda.so"));
        (cmd, dir)
    };
    let (full, dir) = link("standin", &emu.join("libcuda.map"));
    let (partial, partial_dir) = link("standin-partial", &partial_map);
    for (mut cmd, what) in [
        (compile, "compile"),
        (full, "link"),
        (partial, "link (partial)"),
    ] {
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stderr);
                let line = text.lines().find(|l| l.contains("error")).unwrap_or("");
                println!("cargo:warning=the stand-in driver library (kernels/emu/libcuda.cpp) did not {what}: {line}");
                return;
            }
            Err(e) => {
                println!(
                    "cargo:warning=the stand-in driver library: cannot run the C++ compiler: {e}"
                );
                return;
            }
        }
    }
    println!("cargo:rustc-env=DYDIFF_STANDIN_DIR={}", dir.display());
    println!(
        "cargo:rustc-env=DYDIFF_STANDIN_PARTIAL_DIR={}",
        partial_dir.display()
    );
}

/// The architectures of `DYDIFF_CUDA_ARCHS` (default `80;90`), as [`compile_fatbin`] reads them.
fn archs_built() -> Vec<u32> {
    std::env::var("DYDIFF_CUDA_ARCHS")
        .unwrap_or_else(|_| "80;90".into())
        .split([';', ','])
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// Per kernel: registers per thread and static shared bytes of its machine code, the most over
/// the architectures built.
type Resources = std::collections::HashMap<String, (u32, u32)>;

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

/// One translation unit including every kernel source, compiled to `fatbin` with machine code
/// for each architecture of `archs` (`80;90`) and PTX of the highest.
fn compile_fatbin(nvcc: &Path, archs: &str, sources: &[PathBuf], kernels: &Path, fatbin: &Path) {
    let mut list = archs_built();
    list.sort_unstable();
    list.dedup();
    if list.is_empty() {
        eprintln!("DYDIFF_CUDA_ARCHS: expected compute capabilities like 80;90, found {archs:?}");
        std::process::exit(1);
    }
    let unit = fatbin.with_file_name("kernels_all.cu");
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
        .arg(fatbin);
    for a in &list {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let top = list[list.len() - 1];
    cmd.arg(format!("-gencode=arch=compute_{top},code=compute_{top}"));
    cmd.arg(&unit);
    run_or_exit(cmd, "the kernels");
}

/// The emulator's test kernels (`kernels/emu/selftest.cu`) as a cubin for the highest
/// architecture of `DYDIFF_CUDA_ARCHS`, only for their resource figures (never loaded on a GPU).
/// Returns that architecture.
fn compile_selftest(nvcc: &Path, kernels: &Path, cubin: &Path) -> u32 {
    let top = archs_built().into_iter().max().unwrap_or(90);
    let mut cmd = std::process::Command::new(nvcc);
    cmd.args(["-cubin", "-O3", "-std=c++17"])
        .arg(format!("-arch=sm_{top}"))
        .arg("-I")
        .arg(kernels)
        .arg("-o")
        .arg(cubin)
        .arg(kernels.join("emu").join("selftest.cu"));
    run_or_exit(cmd, "the emulator's test kernels");
    top
}

/// Runs an nvcc command; stops the build with its message if it fails.
fn run_or_exit(mut cmd: std::process::Command, what: &str) {
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "nvcc failed on {what}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("cannot run {}: {e}", cmd.get_program().to_string_lossy());
            std::process::exit(1);
        }
    }
}

/// The registers and static shared memory of every kernel in `files` (fatbins, whose listing
/// names each architecture, and cubins of the architecture given beside them), from `cuobjdump
/// -res-usage` beside nvcc: the most over the architectures, less the 1 KiB that sm_90's figure
/// holds for the system (CUDA C++ Programming Guide, “Shared Memory”, compute capability 9.0).
/// Without cuobjdump, none (with a cargo warning: the emulator then checks launch bounds only).
fn read_resources(nvcc: &Path, files: &[(&Path, u32)]) -> Resources {
    let cuobjdump = nvcc.with_file_name("cuobjdump");
    let mut res = Resources::new();
    for &(f, mut arch) in files {
        let out = match std::process::Command::new(&cuobjdump)
            .arg("-res-usage")
            .arg(f)
            .output()
        {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            _ => {
                println!(
                    "cargo:warning=cannot run {} -res-usage: the emulator will not check registers per launch",
                    cuobjdump.display()
                );
                return Resources::new();
            }
        };
        let mut name: Option<String> = None;
        for line in out.lines() {
            let line = line.trim();
            if let Some(a) = line.strip_prefix("arch = sm_") {
                arch = a.trim().parse().unwrap_or(0);
            } else if let Some(n) = line.strip_prefix("Function ") {
                name = Some(n.trim_end_matches(':').to_string());
            } else if let (Some(n), true) = (name.take(), line.starts_with("REG:")) {
                let field = |key: &str| -> u32 {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                let e = res.entry(n).or_insert((0, 0));
                e.0 = e.0.max(field("REG:"));
                let reserved = if arch >= 90 { 1024 } else { 0 };
                e.1 = e.1.max(field("SHARED:").saturating_sub(reserved));
            }
        }
    }
    res
}

/// The `extern "C" __global__ void [__launch_bounds__(MAX, …)] NAME(` kernels of a source, in
/// order: each name with the text of its `MAX` (an expression the kernel's source defines).
fn kernel_names(text: &str) -> Vec<(String, Option<String>)> {
    const OPEN: &str = "extern \"C\" __global__ void ";
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        rest = rest[i + OPEN.len()..].trim_start();
        let mut bounds = None;
        if let Some(after) = rest.strip_prefix("__launch_bounds__(") {
            // the closing parenthesis at depth 0, and the first argument (up to a comma at depth 0)
            let (mut depth, mut close, mut comma) = (0i32, after.len(), None);
            for (j, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        close = j;
                        break;
                    }
                    ')' => depth -= 1,
                    ',' if depth == 0 && comma.is_none() => comma = Some(j),
                    _ => {}
                }
            }
            bounds = Some(after[..comma.unwrap_or(close)].trim().to_string());
            rest = after[(close + 1).min(after.len())..].trim_start();
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push((name, bounds));
        }
    }
    names
}

/// The `#define NAME VALUE` lines of a source whose value is a plain decimal integer (a trailing
/// `//` comment allowed), in order.
fn integer_defines(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("#define ")?;
            let rest = rest.split("//").next()?.trim();
            let (name, value) = rest.split_once(char::is_whitespace)?;
            let value: u64 = value.trim().parse().ok()?;
            let upper = name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            upper.then(|| (name.to_string(), value))
        })
        .collect()
}

/// The files of `dir` whose name ends in `.ext`, sorted.
fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Writes `text` unless the file already holds it (so that cc does not recompile it).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap_or_else(|e| {
            println!("cargo:warning=cannot write {}: {e}", path.display());
        });
    }
}
