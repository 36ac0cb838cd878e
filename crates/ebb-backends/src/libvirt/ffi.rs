//! The FFI edge: the only unsafe code in ebb-backends. It covers the calls
//! virt 0.5 leaves raw or unwrapped: the bulk stats records (virt hands out
//! bare pointers and frees only the outer array, so each call through it
//! would leak every record), the node stats, vCPU pinning, and the
//! typed-parameter getters and setters of the live tunes, and the domain
//! events (graphics and lifecycle) with the event loop they need.
//!
//! It moves plain data only: (name, value) pairs, byte maps. What the
//! names mean and which units they carry is the business of the modules
//! above it (`tune.rs`, `stats.rs`), never of this one.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::Error;

/// One typed parameter's value, as libvirt gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Double(f64),
    Bool(bool),
    Str(String),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::UInt(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(v),
            Value::UInt(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One typed parameter's value to set, in the C type the setter expects:
/// only the types ebb sets (numbers, so no string for libvirt to own).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Param {
    /// VIR_TYPED_PARAM_UINT
    UInt(u32),
    /// VIR_TYPED_PARAM_ULLONG
    ULLong(u64),
}

/// One domain's record of a bulk stats call, copied out of libvirt.
pub struct Record {
    pub dom: Domain,
    pub params: Vec<(String, Value)>,
}

/// `virConnectGetAllDomainStats`, with the records copied into Rust
/// values and freed with `virDomainStatsRecordListFree`.
pub fn all_domain_stats(conn: &Connect, stats: u32, flags: u32) -> Result<Vec<Record>, Error> {
    let mut list: *mut virt_sys::virDomainStatsRecordPtr = ptr::null_mut();
    // SAFETY: `conn` is open for the whole call; libvirt allocates `list`.
    let n = unsafe { virt_sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut list, flags) };
    if n < 0 {
        return Err(Error::last_error());
    }
    let mut out = Vec::with_capacity(n as usize);
    if list.is_null() {
        return Ok(out);
    }
    for i in 0..n as usize {
        // SAFETY: libvirt returned `n` valid record pointers in `list`.
        let rec = unsafe { &**list.add(i) };
        let params = if rec.params.is_null() || rec.nparams <= 0 {
            &[][..]
        } else {
            // SAFETY: `params` holds `nparams` initialised parameters.
            unsafe { std::slice::from_raw_parts(rec.params, rec.nparams as usize) }
        };
        // SAFETY: `rec.dom` is valid while the list lives; the extra
        // reference taken here is the one `Domain` releases on drop, so
        // the domain outlives the list freed below.
        let dom = unsafe {
            if virt_sys::virDomainRef(rec.dom) < 0 {
                continue;
            }
            Domain::from_ptr(rec.dom)
        };
        out.push(Record { dom, params: params.iter().filter_map(copy_param).collect() });
    }
    // SAFETY: `list` came from virConnectGetAllDomainStats and is freed once.
    unsafe { virt_sys::virDomainStatsRecordListFree(list) };
    Ok(out)
}

fn copy_param(p: &virt_sys::virTypedParameter) -> Option<(String, Value)> {
    // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
    let name = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_string_lossy().into_owned();
    // SAFETY: `type_` says which member of the union libvirt wrote, and a
    // string member it wrote is NUL-terminated.
    let value = unsafe {
        match p.type_ as u32 {
            virt_sys::VIR_TYPED_PARAM_INT => Value::Int(i64::from(p.value.i)),
            virt_sys::VIR_TYPED_PARAM_UINT => Value::UInt(u64::from(p.value.ui)),
            virt_sys::VIR_TYPED_PARAM_LLONG => Value::Int(p.value.l),
            virt_sys::VIR_TYPED_PARAM_ULLONG => Value::UInt(p.value.ul),
            virt_sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(p.value.d),
            virt_sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(p.value.b != 0),
            virt_sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                Value::Str(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
            }
            _ => return None,
        }
    };
    Some((name, value))
}

/// The shape of libvirt's typed-parameter getters: `call` is asked with a
/// NULL array and n = 0 for the count, then with room for that many
/// parameters to fill; they are copied out and their strings freed.
fn get_typed_params(mut call: impl FnMut(virt_sys::virTypedParameterPtr, &mut c_int) -> c_int) -> Result<Vec<(String, Value)>, Error> {
    let mut n: c_int = 0;
    if call(ptr::null_mut(), &mut n) < 0 {
        return Err(Error::last_error());
    }
    if n <= 0 {
        return Ok(Vec::new());
    }
    // SAFETY: an all-zero typed parameter is a valid empty one.
    let mut buf: Vec<virt_sys::virTypedParameter> = vec![unsafe { std::mem::zeroed() }; n as usize];
    if call(buf.as_mut_ptr(), &mut n) < 0 {
        return Err(Error::last_error());
    }
    let filled = n.clamp(0, buf.len() as c_int);
    let params = buf[..filled as usize].iter().filter_map(copy_param).collect();
    // SAFETY: frees the strings libvirt put in the `filled` parameters it
    // wrote (device lists, group names), once; `buf` is not read after.
    unsafe { virt_sys::virTypedParamsClear(buf.as_mut_ptr(), filled) };
    Ok(params)
}

/// The shape of libvirt's typed-parameter setters: `params` laid out as
/// libvirt's array and handed to `call` with their count.
fn set_typed_params(params: &[(&str, Param)], call: impl FnOnce(virt_sys::virTypedParameterPtr, c_int) -> c_int) -> Result<(), Error> {
    let mut buf: Vec<virt_sys::virTypedParameter> = params
        .iter()
        .map(|&(name, value)| {
            // SAFETY: an all-zero typed parameter is a valid empty one.
            let mut p: virt_sys::virTypedParameter = unsafe { std::mem::zeroed() };
            // The name and its NUL must fit: ebb's names are constants.
            assert!(name.len() < p.field.len() && !name.contains('\0'), "typed parameter name {name:?}");
            for (dst, src) in p.field.iter_mut().zip(name.bytes()) {
                *dst = src as c_char;
            }
            match value {
                Param::UInt(v) => {
                    p.type_ = virt_sys::VIR_TYPED_PARAM_UINT as c_int;
                    p.value.ui = v;
                }
                Param::ULLong(v) => {
                    p.type_ = virt_sys::VIR_TYPED_PARAM_ULLONG as c_int;
                    p.value.ul = v;
                }
            }
            p
        })
        .collect();
    if call(buf.as_mut_ptr(), buf.len() as c_int) < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

const LIVE: u32 = virt_sys::VIR_DOMAIN_AFFECT_LIVE;

/// The domain's live blkio parameters (`weight`, device lists).
pub fn blkio_parameters(dom: &Domain) -> Result<Vec<(String, Value)>, Error> {
    // SAFETY: `dom` is valid; `buf` is NULL with n = 0 (count only) or has room for `n` parameters.
    get_typed_params(|buf, n| unsafe { virt_sys::virDomainGetBlkioParameters(dom.as_ptr(), buf, n, LIVE) })
}

/// Sets live blkio parameters.
pub fn set_blkio_parameters(dom: &Domain, params: &[(&str, Param)]) -> Result<(), Error> {
    // SAFETY: `dom` is valid; `buf` holds `n` initialised parameters, no strings to free.
    set_typed_params(params, |buf, n| unsafe { virt_sys::virDomainSetBlkioParameters(dom.as_ptr(), buf, n, LIVE) })
}

/// The live parameters of interface `dev` (target name or MAC):
/// `inbound.average`, `outbound.peak`, …
pub fn interface_parameters(dom: &Domain, dev: &CStr) -> Result<Vec<(String, Value)>, Error> {
    // SAFETY: `dom` is valid, `dev` NUL-terminated; `buf` is NULL with n = 0
    // (count only) or has room for `n` parameters.
    get_typed_params(|buf, n| unsafe { virt_sys::virDomainGetInterfaceParameters(dom.as_ptr(), dev.as_ptr(), buf, n, LIVE) })
}

/// Sets live parameters of interface `dev`.
pub fn set_interface_parameters(dom: &Domain, dev: &CStr, params: &[(&str, Param)]) -> Result<(), Error> {
    // SAFETY: `dom` is valid, `dev` NUL-terminated; `buf` holds `n`
    // initialised parameters, no strings to free.
    set_typed_params(params, |buf, n| unsafe { virt_sys::virDomainSetInterfaceParameters(dom.as_ptr(), dev.as_ptr(), buf, n, LIVE) })
}

/// The live I/O limits of disk `dev` (`total_bytes_sec`, …, the group name).
pub fn block_iotune(dom: &Domain, dev: &CStr) -> Result<Vec<(String, Value)>, Error> {
    // SAFETY: `dom` is valid, `dev` NUL-terminated; `buf` is NULL with n = 0
    // (count only) or has room for `n` parameters.
    get_typed_params(|buf, n| unsafe { virt_sys::virDomainGetBlockIoTune(dom.as_ptr(), dev.as_ptr(), buf, n, LIVE) })
}

/// Sets live I/O limits of disk `dev`.
pub fn set_block_iotune(dom: &Domain, dev: &CStr, params: &[(&str, Param)]) -> Result<(), Error> {
    // SAFETY: `dom` is valid, `dev` NUL-terminated; `buf` holds `n`
    // initialised parameters, no strings to free.
    set_typed_params(params, |buf, n| unsafe { virt_sys::virDomainSetBlockIoTune(dom.as_ptr(), dev.as_ptr(), buf, n, LIVE) })
}

/// `virNodeGetCPUStats` of one host CPU: (field, ns) pairs such as
/// `kernel`, `user`, `idle`, `iowait`.
pub fn node_cpu_stats(conn: &Connect, cpu: c_int) -> Result<Vec<(String, u64)>, Error> {
    let empty = virt_sys::virNodeCPUStats { field: [0; 80], value: 0 };
    node_stats(
        empty,
        // SAFETY: `conn` is open; `buf` is NULL (count only) or has room for `n` entries.
        |buf, n| unsafe { virt_sys::virNodeGetCPUStats(conn.as_ptr(), cpu, buf, n, 0) },
        |s| (&s.field, s.value),
    )
}

/// `virNodeGetMemoryStats` for all cells: (field, KiB) pairs such as
/// `total`, `free`, `buffers`, `cached`.
pub fn node_memory_stats(conn: &Connect) -> Result<Vec<(String, u64)>, Error> {
    let cells = virt_sys::VIR_NODE_MEMORY_STATS_ALL_CELLS;
    let empty = virt_sys::virNodeMemoryStats { field: [0; 80], value: 0 };
    node_stats(
        empty,
        // SAFETY: `conn` is open; `buf` is NULL (count only) or has room for `n` entries.
        |buf, n| unsafe { virt_sys::virNodeGetMemoryStats(conn.as_ptr(), cells, buf, n, 0) },
        |s| (&s.field, s.value),
    )
}

/// The node stats calls' shape: asked with NULL for the count, then
/// with room for that many (field, value) entries.
fn node_stats<T: Clone>(
    empty: T,
    mut call: impl FnMut(*mut T, &mut c_int) -> c_int,
    entry: impl Fn(&T) -> (&[c_char; 80], u64),
) -> Result<Vec<(String, u64)>, Error> {
    let mut n: c_int = 0;
    if call(ptr::null_mut(), &mut n) < 0 {
        return Err(Error::last_error());
    }
    if n <= 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![empty; n as usize];
    if call(buf.as_mut_ptr(), &mut n) < 0 {
        return Err(Error::last_error());
    }
    buf.truncate(n.max(0) as usize);
    Ok(buf
        .iter()
        .map(|s| {
            let (field, value) = entry(s);
            // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
            let name = unsafe { CStr::from_ptr(field.as_ptr()) }.to_string_lossy().into_owned();
            (name, value)
        })
        .collect())
}

/// `virDomainGetVcpuPinInfo`, live: each of `vcpus` vCPUs' CPU map of
/// `maplen` bytes (bit N of byte N/8: host CPU N).
pub fn vcpu_pin_info(dom: &Domain, vcpus: usize, maplen: usize) -> Result<Vec<Vec<u8>>, Error> {
    let mut buf = vec![0u8; vcpus * maplen];
    // SAFETY: `buf` holds `vcpus` maps of `maplen` bytes for libvirt to fill.
    let n = unsafe { virt_sys::virDomainGetVcpuPinInfo(dom.as_ptr(), vcpus as c_int, buf.as_mut_ptr(), maplen as c_int, LIVE) };
    if n < 0 {
        return Err(Error::last_error());
    }
    Ok(buf.chunks(maplen).take(n as usize).map(<[u8]>::to_vec).collect())
}

/// What libvirt's domain events say, copied out of the callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainEvent {
    /// VIR_DOMAIN_EVENT_ID_GRAPHICS: a VNC/SPICE client's `phase`
    /// (VIR_DOMAIN_EVENT_GRAPHICS_*) and its remote address and port.
    Graphics { dom: String, phase: u32, node: String, service: String },
    /// VIR_DOMAIN_EVENT_ID_LIFECYCLE: the event (VIR_DOMAIN_EVENT_*) and its detail.
    Lifecycle { dom: String, event: u32 },
}

/// Where the events go: called on libvirt's event thread, so it must
/// return at once (a channel send), never block.
pub type EventSink = std::sync::Arc<dyn Fn(DomainEvent) + Send + Sync>;

/// Registers libvirt's default event loop and starts the thread that runs
/// it, once per process. libvirt needs it before the connection that
/// registers for events is opened (it also gives connections keepalives).
pub fn start_event_loop() -> Result<(), String> {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(|| {
            virt::event::event_register_default_impl().map_err(|e| e.message().to_string())?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::warn!("libvirt's event loop failed: {}", e.message());
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Registers `sink` for the graphics and lifecycle events of every domain
/// of `conn`; returns the callback ids, for `deregister_domain_events`.
/// Each registration owns a clone of `sink`, freed by libvirt's freecb.
pub fn register_domain_events(conn: &Connect, sink: &EventSink) -> Result<Vec<c_int>, Error> {
    type Graphics = unsafe extern "C" fn(
        virt_sys::virConnectPtr,
        virt_sys::virDomainPtr,
        c_int,
        *const virt_sys::virDomainEventGraphicsAddress,
        *const virt_sys::virDomainEventGraphicsAddress,
        *const c_char,
        *const virt_sys::virDomainEventGraphicsSubject,
        *mut c_void,
    );
    type Lifecycle = unsafe extern "C" fn(virt_sys::virConnectPtr, virt_sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
    type Generic = unsafe extern "C" fn(virt_sys::virConnectPtr, virt_sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt calls each callback with the signature of its event
    // id; the generic type is how its C API erases them.
    let callbacks: [(u32, virt_sys::virConnectDomainEventGenericCallback); 2] = unsafe {
        [
            (virt_sys::VIR_DOMAIN_EVENT_ID_GRAPHICS, Some(std::mem::transmute::<Graphics, Generic>(on_graphics as Graphics))),
            (virt_sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, Some(std::mem::transmute::<Lifecycle, Generic>(on_lifecycle as Lifecycle))),
        ]
    };
    let mut ids = Vec::new();
    for (event, cb) in callbacks {
        let opaque = Box::into_raw(Box::new(sink.clone())) as *mut c_void;
        // SAFETY: `conn` is open; libvirt owns `opaque` from here and gives
        // it back to `free_sink` once, when the callback is deregistered.
        let id = unsafe { virt_sys::virConnectDomainEventRegisterAny(conn.as_ptr(), ptr::null_mut(), event as c_int, cb, opaque, Some(free_sink)) };
        if id < 0 {
            let e = Error::last_error();
            // SAFETY: the registration failed: libvirt did not take `opaque`.
            drop(unsafe { Box::from_raw(opaque as *mut EventSink) });
            deregister_domain_events(conn, &ids);
            return Err(e);
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Deregisters callbacks `register_domain_events` returned (a connection
/// already lost refuses: nothing is left to deregister then).
pub fn deregister_domain_events(conn: &Connect, ids: &[c_int]) {
    for id in ids {
        // SAFETY: `conn` is open (or closed: libvirt returns an error).
        unsafe { virt_sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), *id) };
    }
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: `opaque` is the box `register_domain_events` gave libvirt.
    drop(unsafe { Box::from_raw(opaque as *mut EventSink) });
}

/// A C string libvirt owns, copied; empty for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: as the caller promised.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// # Safety
/// Called by libvirt during the callback only: `dom` is valid.
unsafe fn dom_name(dom: virt_sys::virDomainPtr) -> String {
    // SAFETY: `dom` is valid for the callback; the name lives as long.
    unsafe { text(virt_sys::virDomainGetName(dom)) }
}

/// Hands the event over; a panic must not unwind into libvirt.
fn deliver(opaque: *mut c_void, event: DomainEvent) {
    // SAFETY: `opaque` is the sink `register_domain_events` registered;
    // libvirt keeps it until `free_sink`, after the last callback.
    let sink = unsafe { &*(opaque as *const EventSink) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(event)));
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn on_graphics(
    _conn: virt_sys::virConnectPtr,
    dom: virt_sys::virDomainPtr,
    phase: c_int,
    _local: *const virt_sys::virDomainEventGraphicsAddress,
    remote: *const virt_sys::virDomainEventGraphicsAddress,
    _auth: *const c_char,
    _subject: *const virt_sys::virDomainEventGraphicsSubject,
    opaque: *mut c_void,
) {
    // SAFETY: libvirt passes valid pointers (or NULL) for the callback's life.
    let event = unsafe {
        let (node, service) = remote.as_ref().map_or((String::new(), String::new()), |r| (text(r.node), text(r.service)));
        DomainEvent::Graphics { dom: dom_name(dom), phase: phase as u32, node, service }
    };
    deliver(opaque, event);
}

unsafe extern "C" fn on_lifecycle(_conn: virt_sys::virConnectPtr, dom: virt_sys::virDomainPtr, event: c_int, _detail: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: `dom` is valid for the callback.
    let dom = unsafe { dom_name(dom) };
    deliver(opaque, DomainEvent::Lifecycle { dom, event: event as u32 });
    0
}
