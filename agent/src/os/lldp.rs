//! Listening for LLDP: one raw `AF_PACKET` socket per interface, bound to EtherType 0x88cc
//! and joined to LLDP's multicast group (01:80:c2:00:00:0e, which a NIC's filter drops
//! otherwise), all polled at once from one thread until every interface has heard its
//! neighbour or the time is up. Frames are parsed by [`kiln_protocol::lldp::parse`]; the
//! first good one per interface is kept.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use kiln_protocol::lldp::{ETHERTYPE, Neighbor};

/// LLDP's destination group (nearest bridge).
const GROUP: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];

/// What was heard on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A neighbour.
    Neighbor(Neighbor),
    /// Nothing (or nothing that parsed: the last reason) within the time.
    Nothing(Option<String>),
    /// The interface could not be listened on.
    Unreadable(String),
}

/// A socket listening for LLDP on interface `name`.
fn open(name: &str) -> Result<OwnedFd, String> {
    let c_name = std::ffi::CString::new(name).map_err(|_| format!("{name}: bad interface name"))?;
    // SAFETY: if_nametoindex reads the NUL-terminated name it is given.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(format!("{name}: no such interface"));
    }
    let proto = ETHERTYPE.to_be();
    // SAFETY: socket has no memory preconditions; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(format!(
            "{name}: raw socket: {} (needs CAP_NET_RAW)",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just returned by socket and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value before the fields are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a valid sockaddr_ll and its size is passed with it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(format!("{name}: bind: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: packet_mreq is plain data; all-zero is valid before the fields are set.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = index as i32;
    mreq.mr_type = libc::PACKET_MR_MULTICAST as u16;
    mreq.mr_alen = 6;
    mreq.mr_address[..6].copy_from_slice(&GROUP);
    // SAFETY: mreq is a valid packet_mreq and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&raw const mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "{name}: joining LLDP's group: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Listens on every interface of `names` at once for up to `timeout`, or until each has
/// heard a neighbour; one answer per interface, in order.
pub fn listen(names: &[String], timeout: Duration) -> Vec<(String, Heard)> {
    let mut heard: Vec<Heard> = Vec::with_capacity(names.len());
    let mut sockets: Vec<Option<OwnedFd>> = Vec::with_capacity(names.len());
    for name in names {
        match open(name) {
            Ok(fd) => {
                sockets.push(Some(fd));
                heard.push(Heard::Nothing(None));
            }
            Err(e) => {
                sockets.push(None);
                heard.push(Heard::Unreadable(e));
            }
        }
    }
    let started = Instant::now();
    let mut buf = vec![0u8; 9216];
    loop {
        let waiting: Vec<usize> = (0..names.len())
            .filter(|&i| sockets[i].is_some() && matches!(heard[i], Heard::Nothing(_)))
            .collect();
        let left = timeout.saturating_sub(started.elapsed());
        if waiting.is_empty() || left.is_zero() {
            break;
        }
        let mut polls: Vec<libc::pollfd> = waiting
            .iter()
            .map(|&i| libc::pollfd {
                fd: sockets[i].as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: polls is a valid array of pollfd of the length passed.
        let ready = unsafe {
            libc::poll(
                polls.as_mut_ptr(),
                polls.len() as libc::nfds_t,
                left.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            for &i in &waiting {
                heard[i] = Heard::Unreadable(format!("{}: poll: {err}", names[i]));
            }
            break;
        }
        for (p, &i) in polls.iter().zip(&waiting) {
            if p.revents & libc::POLLIN == 0 {
                continue;
            }
            let Some(fd) = &sockets[i] else { continue };
            // Every frame waiting on this socket: the first that parses is the neighbour.
            loop {
                // SAFETY: buf is valid for its length; a non-blocking recv writes at most that.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    break;
                }
                match kiln_protocol::lldp::parse(&buf[..n as usize]) {
                    Ok(neighbor) => {
                        heard[i] = Heard::Neighbor(neighbor);
                        break;
                    }
                    Err(e) => heard[i] = Heard::Nothing(Some(e.to_string())),
                }
            }
        }
    }
    names.iter().cloned().zip(heard).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn ip(args: &[&str]) {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {}", args.join(" "));
    }

    /// A namespace of this test's, entered by this thread, deleted on drop.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// Real lldpd on one end of a veth pair in a namespace of the test's own; the agent
    /// listens on the other end and on an interface where nothing speaks.
    #[test]
    fn a_neighbour_lldpd_announces_is_heard_and_a_silent_link_is_said() {
        let name = format!("kiln-lldp-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        let handle = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
        // SAFETY: setns borrows the descriptor for the call and moves only this thread.
        let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0);
        ip(&["link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "sw0", "type", "veth", "peer", "name", "node0",
        ]);
        ip(&[
            "link", "add", "quiet0", "type", "veth", "peer", "name", "quiet1",
        ]);
        for dev in ["sw0", "node0", "quiet0", "quiet1"] {
            ip(&["link", "set", dev, "up"]);
        }
        let dir = std::env::temp_dir().join(&ns.0);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("lldpd.conf"),
            "configure system hostname leaf-t-a\nconfigure lldp tx-interval 1\n\
             configure ports sw0 lldp portidsubtype local Ethernet1/3 description \"T03 eth0\"\n",
        )
        .unwrap();
        let mut lldpd = Command::new("lldpd")
            .args(["-d", "-I", "sw0", "-O"])
            .arg(dir.join("lldpd.conf"))
            .arg("-u")
            .arg(dir.join("lldpd.socket"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lldpd (Debian's lldpd package; .ci/setup installs it)");
        let names = [
            "node0".to_owned(),
            "quiet1".to_owned(),
            "nothere".to_owned(),
        ];
        let heard = listen(&names, Duration::from_secs(6));
        let _ = lldpd.kill();
        let _ = lldpd.wait();
        let _ = std::fs::remove_dir_all(&dir);
        match &heard[0].1 {
            Heard::Neighbor(n) => {
                assert_eq!(n.switch(), "leaf-t-a");
                assert_eq!(n.port_id, "Ethernet1/3");
                assert_eq!(n.port_description.as_deref(), Some("T03 eth0"));
            }
            other => panic!("node0: {other:?}"),
        }
        assert_eq!(heard[1].1, Heard::Nothing(None));
        assert!(
            matches!(&heard[2].1, Heard::Unreadable(e) if e.contains("no such interface")),
            "{heard:?}"
        );
    }
}
