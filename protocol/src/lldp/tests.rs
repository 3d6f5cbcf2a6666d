use super::*;

/// One frame `lldpd` 1.0.16 sent in a namespace of this machine, captured off a veth with an
/// `AF_PACKET` socket: `configure system hostname leaf-r12-a`, `configure ports veth-sw lldp
/// portidsubtype local Ethernet1/7 description "R12U08 eth1"`, `-m 10.88.0.2`.
const LLDPD: &str = "0180c200000e72e23f08170888cc02070472e23f081708040c0745746865726e6574312f37060200140a0a6c6561662d7231322d610c5644656269616e20474e552f4c696e75782031322028626f6f6b776f726d29204c696e757820362e31382e34342d66632d763132373220233120534d5020505245454d50545f44594e414d4943204030207838365f36340e04009c0080100c05010a580002020000000300080b5231325530382065746831fe0900120f030100000000fe0900120f0100800000360000";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_frame_lldpd_sent_reads_as_its_configuration_said() {
    let n = parse(&unhex(LLDPD)).unwrap();
    assert_eq!(n.chassis_id, "72:e2:3f:08:17:08");
    assert_eq!(n.port_id, "Ethernet1/7");
    assert_eq!(n.ttl_s, 20);
    assert_eq!(n.system_name.as_deref(), Some("leaf-r12-a"));
    assert_eq!(n.port_description.as_deref(), Some("R12U08 eth1"));
    assert_eq!(n.management_address.as_deref(), Some("10.88.0.2"));
    assert_eq!((n.vlan, n.max_frame_size), (None, None));
    assert_eq!(n.switch(), "leaf-r12-a");
}

/// The frame of Wireshark's `lldp.detailed.pcap` sample as its dissection documents it: an
/// Extreme Summit300-48, chassis ID a MAC, port ID the interface name `1/1`, TTL 120, the
/// port's VLAN 488 (IEEE 802.1) and a maximum frame size of 1522 (IEEE 802.3), with a
/// management address 0.0.0.0 and TLVs kiln skips (capabilities, other organizations').
fn summit() -> Vec<u8> {
    let org = |oui: [u8; 3], sub: u8, info: &[u8]| {
        let mut v = oui.to_vec();
        v.push(sub);
        v.extend_from_slice(info);
        (127u8, v)
    };
    // Address 0.0.0.0 (IPv4), interface 1001 by ifIndex, no OID.
    let mgmt = vec![5, 1, 0, 0, 0, 0, 2, 0, 0, 0x03, 0xe9, 0];
    frame(
        [0x00, 0x01, 0x30, 0xf9, 0xad, 0xa0],
        &[
            (
                1,
                [&[4u8][..], &[0x00, 0x01, 0x30, 0xf9, 0xad, 0xa0]].concat(),
            ),
            (2, [&[5u8][..], b"1/1"].concat()),
            (3, vec![0, 120]),
            (4, b"Summit300-48-Port 1001\0".to_vec()),
            (5, b"Summit300-48\0".to_vec()),
            (
                6,
                b"Summit300-48 - Version 7.4e.1 (Build 5) by Release_Master 05/27/05 04:53:11\0"
                    .to_vec(),
            ),
            (7, vec![0x00, 0x14, 0x00, 0x14]),
            (8, mgmt),
            org([0x00, 0x80, 0xc2], 1, &[0x01, 0xe8]),
            org(
                [0x00, 0x80, 0xc2],
                3,
                &[0x01, 0xe8, 4, b'v', b'4', b'8', b'8'],
            ),
            org([0x00, 0x12, 0x0f], 4, &[0x05, 0xf2]),
            org([0x00, 0x0e, 0x8f], 1, &[0, 1, 2]),
            (0, Vec::new()),
        ],
    )
}

#[test]
fn a_switchs_documented_frame_gives_its_port_vlan_and_frame_size() {
    let n = parse(&summit()).unwrap();
    assert_eq!(n.chassis_id, "00:01:30:f9:ad:a0");
    assert_eq!(n.port_id, "1/1");
    assert_eq!(n.ttl_s, 120);
    // A NUL the switch sent is shown, not obeyed.
    assert_eq!(n.system_name.as_deref(), Some("Summit300-48\\u{0}"));
    assert_eq!(n.vlan, Some(488));
    assert_eq!((n.max_frame_size, n.mtu()), (Some(1522), Some(1500)));
    assert_eq!(n.management_address.as_deref(), Some("0.0.0.0"));
}

#[test]
fn a_tagged_frame_is_read_past_its_tag() {
    let mut f = unhex(LLDPD);
    f.splice(12..12, [0x81, 0x00, 0x00, 0x78]);
    assert_eq!(parse(&f).unwrap().port_id, "Ethernet1/7");
}

#[test]
fn hostile_frames_are_refused_with_the_reason() {
    let good = unhex(LLDPD);
    let mut long_tlv = good.clone();
    // The system name's TLV (type 5) claims 511 bytes.
    let at = good.windows(2).position(|w| w == [0x0a, 0x0a]).unwrap();
    long_tlv[at] = 0x0b;
    long_tlv[at + 1] = 0xff;
    let mut no_ttl = frame(
        [0; 6],
        &[(1, vec![4, 1, 2, 3, 4, 5, 6]), (2, vec![5, b'x'])],
    );
    let ttl_first = frame([0; 6], &[(3, vec![0, 1]), (1, vec![4, 1, 2, 3, 4, 5, 6])]);
    let empty_id = frame([0; 6], &[(1, vec![4]), (2, vec![5, b'x']), (3, vec![0, 1])]);
    let long_ttl = frame(
        [0; 6],
        &[(1, vec![7, b'c']), (2, vec![5, b'x']), (3, vec![0, 1, 2])],
    );
    let mut ip = good.clone();
    ip[12] = 0x08;
    ip[13] = 0x00;
    for (bytes, says) in [
        (good[..13].to_vec(), "shorter than an Ethernet header"),
        (ip, "not LLDP's"),
        (good[..good.len() - 40].to_vec(), "claims"),
        (long_tlv, "claims 511 bytes"),
        (std::mem::take(&mut no_ttl), "type 3"),
        (ttl_first, "found type 3 where type 1"),
        (empty_id, "too short"),
        (long_ttl, "type 3 is 3 bytes"),
        ([&good[..14], &[0x02]].concat(), "claims 2 bytes"),
    ] {
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
}

#[test]
fn ten_thousand_tlvs_are_read_in_one_pass_and_none_is_kept_beyond_its_bounds() {
    let mut tlvs = vec![(1, vec![7, b'c']), (2, vec![7, b'p']), (3, vec![0, 30])];
    for i in 0..10_000u32 {
        // Unknown types, organizational TLVs too short to read, long texts, control bytes.
        tlvs.push(match i % 4 {
            0 => (9 + (i % 100) as u8, vec![0; 3]),
            1 => (127, vec![0x00, 0x80]),
            2 => (4, vec![b'\x1b'; 511]),
            _ => (5, b"\x1b]52;c;ZXZpbA==\x07".to_vec()),
        });
    }
    let n = parse(&frame([0; 6], &tlvs)).unwrap();
    assert_eq!(
        (n.chassis_id.as_str(), n.port_id.as_str(), n.ttl_s),
        ("c", "p", 30)
    );
    let descr = n.port_description.unwrap();
    assert!(descr.chars().count() <= MAX_TEXT, "{}", descr.len());
    assert!(!descr.contains('\x1b'));
    assert!(!n.system_name.unwrap().contains('\x07'));
    assert_eq!((n.vlan, n.max_frame_size), (None, None));
}
