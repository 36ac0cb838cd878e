//! What a lab guest looks like (`GuestSpec`) and the libvirt domain XML for it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ebb_core::Bytes;

use super::image::GuestImage;
use super::net::LAB_BRIDGE;

/// What a lab guest looks like.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub name: String,
    /// The guest's physical memory (`<memory>`): the most the balloon can give it.
    pub max_memory: Bytes,
    /// The balloon target at boot (`<currentMemory>`).
    pub memory: Bytes,
    pub vcpus: u32,
    /// Host port forwarded from 127.0.0.1 to the guest's httpd on port 80.
    pub http_port: Option<u16>,
    /// Started at boot, e.g. `mem:200:8:250:0` (MIB:STEP_MIB:INTERVAL_MS:HOLD_S).
    pub workload: Option<String>,
    /// Balloon statistics period in seconds (0 turns the stats off).
    pub stats_period_s: u32,
    /// libvirt's `autodeflate`: the guest may take balloon pages back under OOM.
    /// Note: with it on, the guest's MemTotal no longer shrinks as the balloon grows.
    pub deflate_on_oom: bool,
    /// libvirt's `freePageReporting`: the guest hands the pages it frees to the host.
    pub free_page_reporting: bool,
    /// false → `<memballoon model='none'/>`.
    pub balloon: bool,
    /// The guest's serial console is written here (qemu must be able to create it).
    pub console_log: PathBuf,
    /// A complete `<…>` element in ebb's namespace, put inside `<metadata>`.
    pub metadata: Option<String>,
    /// A CPU cap: each vCPU may run `.1` µs per `.0` µs (`<cputune>`).
    pub cpu_cap: Option<(u64, u64)>,
    /// A raw disk image the guest sees as /dev/vda (virtio).
    pub disk: Option<PathBuf>,
    /// Its disk's own I/O limit, bytes per second (`<iotune><total_bytes_sec>`).
    pub disk_limit: Option<u64>,
    /// A channel for the QEMU guest agent, which the image starts.
    pub guest_agent: bool,
    /// Its own disk I/O weight (`<blkiotune><weight>`).
    pub io_weight: Option<u32>,
    /// A second NIC (the guest's eth1), of type `ethernet` on a host tap of
    /// this name that libvirt makes and removes: nothing is behind it, so
    /// what the guest sends there ends on the tap.
    pub tap: Option<String>,
    /// Its address on the bridge of `LabNet` (instead of the user-mode
    /// forward): the guest must be created through `LabNet::lab`.
    pub lab_net: Option<Ipv4Addr>,
    /// A VNC console on 127.0.0.1 (a port libvirt picks), for viewers.
    pub vnc: bool,
}

impl GuestSpec {
    /// One vCPU, `memory` both max and current, balloon with 1 s stats and
    /// both safety nets (deflate-on-OOM, free page reporting: what the
    /// README asks of guests), no network, console log at
    /// `/var/log/ebb/lab/<name>.console.log`.
    pub fn new(name: impl Into<String>, memory: Bytes) -> GuestSpec {
        let name = name.into();
        GuestSpec {
            console_log: PathBuf::from(format!("/var/log/ebb/lab/{name}.console.log")),
            name,
            max_memory: memory,
            memory,
            vcpus: 1,
            http_port: None,
            workload: None,
            stats_period_s: 1,
            deflate_on_oom: true,
            free_page_reporting: true,
            balloon: true,
            metadata: None,
            cpu_cap: None,
            disk: None,
            io_weight: None,
            guest_agent: false,
            disk_limit: None,
            tap: None,
            lab_net: None,
            vnc: false,
        }
    }

    /// A stock balloon: neither deflate-on-OOM nor free page reporting.
    pub fn stock_balloon(&mut self) -> &mut GuestSpec {
        self.deflate_on_oom = false;
        self.free_page_reporting = false;
        self
    }

    /// The guest kernel's command line.
    pub fn cmdline(&self) -> String {
        let mut c = format!("console=ttyS0 quiet panic=-1 ebb.name={}", self.name);
        if let Some(ip) = self.lab_net {
            let _ = write!(c, " ebb.ip={ip}/24");
        } else if self.http_port.is_some() {
            c.push_str(" ebb.net=1");
        }
        if let Some(w) = &self.workload {
            let _ = write!(c, " ebb.workload={w}");
        }
        c
    }

    /// The libvirt domain XML for this guest booted from `image`.
    pub fn domain_xml(&self, image: &GuestImage) -> String {
        let e = xml_escape;
        let mut x = String::new();
        let _ = writeln!(x, "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>");
        let _ = writeln!(x, "  <name>{}</name>", e(&self.name));
        let _ = writeln!(x, "  <description>ebb lab guest</description>");
        if let Some(m) = &self.metadata {
            let _ = writeln!(x, "  <metadata>\n    {m}\n  </metadata>");
        }
        let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", self.max_memory.kib());
        let _ = writeln!(x, "  <currentMemory unit='KiB'>{}</currentMemory>", self.memory.min(self.max_memory).kib());
        let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", self.vcpus.max(1));
        if let Some((period, quota)) = self.cpu_cap {
            let _ = writeln!(x, "  <cputune><period>{period}</period><quota>{quota}</quota></cputune>");
        }
        if let Some(w) = self.io_weight {
            let _ = writeln!(x, "  <blkiotune><weight>{w}</weight></blkiotune>");
        }
        let _ = writeln!(x, "  <os>");
        let _ = writeln!(x, "    <type arch='x86_64'>hvm</type>");
        let _ = writeln!(x, "    <kernel>{}</kernel>", e(&image.kernel.to_string_lossy()));
        let _ = writeln!(x, "    <initrd>{}</initrd>", e(&image.initrd.to_string_lossy()));
        let _ = writeln!(x, "    <cmdline>{}</cmdline>", e(&self.cmdline()));
        let _ = writeln!(x, "  </os>");
        let _ = writeln!(x, "  <features><acpi/></features>");
        let _ = writeln!(x, "  <clock offset='utc'/>");
        // A dead guest should stay dead (and be seen), not reboot in a loop.
        let _ = writeln!(x, "  <on_poweroff>destroy</on_poweroff>");
        let _ = writeln!(x, "  <on_reboot>destroy</on_reboot>");
        let _ = writeln!(x, "  <on_crash>destroy</on_crash>");
        let _ = writeln!(x, "  <devices>");
        let _ = writeln!(x, "    <controller type='usb' model='none'/>");
        let _ = writeln!(x, "    <serial type='file'>");
        let _ = writeln!(x, "      <source path='{}'/>", e(&self.console_log.to_string_lossy()));
        let _ = writeln!(x, "      <target port='0'/>");
        let _ = writeln!(x, "    </serial>");
        if let Some(disk) = &self.disk {
            let _ = writeln!(x, "    <disk type='file' device='disk'>");
            let _ = writeln!(x, "      <driver name='qemu' type='raw' cache='none'/>");
            let _ = writeln!(x, "      <source file='{}'/>", e(&disk.to_string_lossy()));
            let _ = writeln!(x, "      <target dev='vda' bus='virtio'/>");
            if let Some(l) = self.disk_limit {
                let _ = writeln!(x, "      <iotune><total_bytes_sec>{l}</total_bytes_sec></iotune>");
            }
            let _ = writeln!(x, "    </disk>");
        }
        if self.lab_net.is_some() {
            // On the lab namespace's bridge, in the user-mode NIC's slot.
            let _ = writeln!(x, "    <interface type='bridge'>");
            let _ = writeln!(x, "      <source bridge='{LAB_BRIDGE}'/>");
            let _ = writeln!(x, "      <model type='virtio'/>");
            let _ = writeln!(x, "      <rom enabled='no'/>");
            let _ = writeln!(x, "      <address type='pci' domain='0x0000' bus='0x00' slot='0x09' function='0x0'/>");
            let _ = writeln!(x, "    </interface>");
        }
        if let Some(tap) = &self.tap {
            // After the user-mode NIC's slot 0x9, so it is eth1; no PXE ROM.
            let _ = writeln!(x, "    <interface type='ethernet'>");
            let _ = writeln!(x, "      <target dev='{}' managed='yes'/>", e(tap));
            let _ = writeln!(x, "      <model type='virtio'/>");
            let _ = writeln!(x, "      <rom enabled='no'/>");
            let _ = writeln!(x, "      <address type='pci' domain='0x0000' bus='0x00' slot='0x0a' function='0x0'/>");
            let _ = writeln!(x, "    </interface>");
        }
        if self.vnc {
            let _ = writeln!(x, "    <graphics type='vnc' listen='127.0.0.1' autoport='yes'/>");
        }
        if self.guest_agent {
            let _ = writeln!(x, "    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>");
        }
        if self.balloon {
            let deflate = if self.deflate_on_oom { " autodeflate='on'" } else { "" };
            let fpr = if self.free_page_reporting { " freePageReporting='on'" } else { "" };
            let _ = writeln!(x, "    <memballoon model='virtio'{deflate}{fpr}>");
            let _ = writeln!(x, "      <stats period='{}'/>", self.stats_period_s);
            let _ = writeln!(x, "    </memballoon>");
        } else {
            let _ = writeln!(x, "    <memballoon model='none'/>");
        }
        let _ = writeln!(x, "  </devices>");
        if let (Some(port), None) = (self.http_port, self.lab_net) {
            // QEMU user networking through qemu:commandline: no bridge, no
            // host address but the loopback forward. addr=0x9 keeps the NIC
            // off the balloon's PCI slot.
            let _ = writeln!(x, "  <qemu:commandline>");
            let _ = writeln!(x, "    <qemu:arg value='-netdev'/>");
            let _ = writeln!(x, "    <qemu:arg value='user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80'/>");
            let _ = writeln!(x, "    <qemu:arg value='-device'/>");
            let _ = writeln!(x, "    <qemu:arg value='virtio-net-pci,netdev=n0,addr=0x9'/>");
            let _ = writeln!(x, "  </qemu:commandline>");
        }
        x.push_str("</domain>\n");
        x
    }
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}
