//! The guest image: the host's newest kernel and a busybox initramfs built
//! from the embedded `guest/` files, cached under a key of their hash.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{io_err, LabError, Result, DEFAULT_GUEST_DIR};

/// Files of `guest/`, embedded; all of them go into the image's cache key.
const GUEST_FILES: &[(&str, &str)] = &[
    ("build-image.sh", include_str!("../../../../guest/build-image.sh")),
    ("init", include_str!("../../../../guest/init")),
    ("ebb-mem", include_str!("../../../../guest/ebb-mem")),
    ("cgi-bin/status", include_str!("../../../../guest/cgi-bin/status")),
    ("cgi-bin/mem", include_str!("../../../../guest/cgi-bin/mem")),
    ("cgi-bin/release", include_str!("../../../../guest/cgi-bin/release")),
    ("cgi-bin/hit", include_str!("../../../../guest/cgi-bin/hit")),
    ("cgi-bin/hits", include_str!("../../../../guest/cgi-bin/hits")),
    ("cgi-bin/bulk", include_str!("../../../../guest/cgi-bin/bulk")),
    ("cgi-bin/cpu", include_str!("../../../../guest/cgi-bin/cpu")),
    ("cgi-bin/disk", include_str!("../../../../guest/cgi-bin/disk")),
    ("cgi-bin/work", include_str!("../../../../guest/cgi-bin/work")),
    ("cgi-bin/net", include_str!("../../../../guest/cgi-bin/net")),
];

/// A built guest image: a kernel and an initramfs, readable by libvirt's qemu user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's version string, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// The cache key: sha256 of the embedded guest files and the kernel version.
    pub key: String,
}

impl GuestImage {
    /// Returns the cached image, building it first when the cache lacks it.
    /// Cache: `$EBB_GUEST_DIR` or `/var/cache/ebb/guest`, one folder per key.
    pub fn ensure() -> Result<GuestImage> {
        let base = std::env::var_os("EBB_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR));
        Self::ensure_in(&base)
    }

    /// As [`GuestImage::ensure`], with the cache at `base`.
    pub fn ensure_in(base: &Path) -> Result<GuestImage> {
        let kernel_version = newest_kernel_version()?;
        let key = image_key(&kernel_version);
        let dir = base.join(&key);
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            kernel_version: kernel_version.clone(),
            key: key.clone(),
        };
        if image.kernel.is_file() && image.initrd.is_file() {
            return Ok(image);
        }
        create_dir_0755(base)?;
        // Build beside the final folder, then rename: a crash leaves only a
        // `.build-*` folder, never a half image under the key.
        static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = base.join(format!(".build-{key}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = build_into(&tmp, &kernel_version).and_then(|out| {
            match std::fs::rename(&out, &dir) {
                Ok(()) => Ok(()),
                // Another process finished the same image first: use theirs.
                Err(_) if image.kernel.is_file() && image.initrd.is_file() => Ok(()),
                Err(e) => Err(io_err("move the built image to", &dir)(e)),
            }
        });
        let _ = std::fs::remove_dir_all(&tmp);
        result?;
        set_mode(&dir, 0o755)?;
        Ok(image)
    }
}

pub(super) fn create_dir_0755(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err("create the folder", dir))?;
    set_mode(dir, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set the permissions of", path))
}

/// Writes the embedded guest files to `tmp/src`, runs the build script into
/// `tmp/out` and returns `tmp/out`.
fn build_into(tmp: &Path, kernel_version: &str) -> Result<PathBuf> {
    let src = tmp.join("src");
    let out = tmp.join("out");
    for (name, text) in GUEST_FILES {
        let path = src.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create the folder", parent))?;
        }
        std::fs::write(&path, text).map_err(io_err("write", &path))?;
        set_mode(&path, 0o755)?;
    }
    let output = Command::new("sh")
        .arg(src.join("build-image.sh"))
        .arg(&out)
        .env("EBB_GUEST_KVER", kernel_version)
        .env("TMPDIR", tmp)
        .output()
        .map_err(io_err("run sh for", &src.join("build-image.sh")))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(LabError::ImageBuild {
            out,
            status: output.status.to_string(),
            output: text.trim().to_string(),
        });
    }
    set_mode(&out, 0o755)?;
    Ok(out)
}

pub(super) fn image_key(kernel_version: &str) -> String {
    let mut h = Sha256::new();
    for (name, text) in GUEST_FILES {
        // Length-prefixed so no two file sets hash alike by shifting bytes.
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(b"kernel:");
    h.update(kernel_version.as_bytes());
    let digest = h.finalize();
    digest.iter().take(8).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The version of the newest `/boot/vmlinuz-*` (the one the build script picks too).
fn newest_kernel_version() -> Result<String> {
    let entries = std::fs::read_dir("/boot").map_err(|_| LabError::NoKernel)?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
        .ok_or(LabError::NoKernel)
}

/// `6.1.0-56-amd64` → runs of digits compare as numbers, the rest as text.
pub(super) fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut parts = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            parts.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            parts.push((0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    parts
}
