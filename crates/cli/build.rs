//! Facts about the machine the real-VM tests run on, as cfgs, so that a
//! test that cannot run here is ignored with its reason through the test
//! framework (`#[cfg_attr(one_cpu, ignore = "...")]`) instead of passing
//! without having run. The tests are built where they run (CI builds on
//! its machine), so the build's machine is the tests'.

use std::net::UdpSocket;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(one_cpu)");
    println!("cargo::rustc-check-cfg=cfg(no_outward_address)");
    println!("cargo::rerun-if-changed=build.rs");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        println!("cargo::rustc-cfg=one_cpu");
    }
    if outward_address().is_none() {
        println!("cargo::rustc-cfg=no_outward_address");
    }
}

/// This machine's address on its way out, if it has one besides loopback.
fn outward_address() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks a route.
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback())
}
