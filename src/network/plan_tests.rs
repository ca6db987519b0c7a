use super::*;

#[test]
fn subnet_default_is_envboxs_and_derives_both_ends() {
    let s = Subnet::default();
    assert_eq!(s.to_string(), "172.19.0.0/30");
    assert_eq!(s.outer(), Ipv4Addr::new(172, 19, 0, 1));
    assert_eq!(s.inner(), Ipv4Addr::new(172, 19, 0, 2));
    let s: Subnet = "10.200.0.0/24".parse().unwrap();
    assert_eq!(
        (s.outer(), s.inner(), s.prefix()),
        (
            "10.200.0.1".parse().unwrap(),
            "10.200.0.2".parse().unwrap(),
            24
        )
    );
}

#[test]
fn subnet_refuses_what_cannot_hold_the_pair() {
    for (v, why) in [
        ("172.19.0.0", "is not an IPv4 CIDR"),
        ("fd00::/64", "is not an IPv4 CIDR"),
        ("172.19.0.0/33", "is not an IPv4 CIDR"),
        ("172.19.0.0/x", "is not an IPv4 CIDR"),
        ("172.19.0.0/31", "fewer than 2 usable host addresses"),
        ("172.19.0.0/32", "fewer than 2 usable host addresses"),
        ("172.19.0.1/30", "did you mean 172.19.0.0/30?"),
        ("0.0.0.0/0", "not a usable private network"),
        ("127.0.0.0/30", "not a usable private network"),
        ("224.0.0.0/30", "not a usable private network"),
    ] {
        let e = v.parse::<Subnet>().unwrap_err();
        assert!(e.contains(why), "{v}: {e}");
    }
}

#[test]
fn ports_parse_with_protocol_and_shorthand() {
    let p = parse_ports("8080:80, 5353:53/udp,2222/tcp").unwrap();
    assert_eq!(
        p,
        [
            PortForward {
                outer: 8080,
                inner: 80,
                proto: Proto::Tcp
            },
            PortForward {
                outer: 5353,
                inner: 53,
                proto: Proto::Udp
            },
            PortForward {
                outer: 2222,
                inner: 2222,
                proto: Proto::Tcp
            },
        ]
    );
    assert_eq!(parse_ports("").unwrap(), []);
    // The same port over both protocols is two forwards.
    assert_eq!(parse_ports("53/udp,53/tcp").unwrap().len(), 2);
}

#[test]
fn ports_refuse_bad_entries_naming_them() {
    for (v, why) in [
        ("8080:0", "not a number from 1 to 65535"),
        ("70000:80", "not a number from 1 to 65535"),
        ("http:80", "not a number from 1 to 65535"),
        ("8080:80/sctp", "protocol other than tcp or udp"),
        ("8080:80,8080:81", "already forwarded"),
    ] {
        let e = parse_ports(v).unwrap_err();
        assert!(e.contains(why), "{v}: {e}");
        assert!(e.contains("OUTER:INNER"), "says the form: {e}");
    }
}

#[test]
fn mtu_and_mode_are_checked() {
    assert_eq!(parse_mtu("1400"), Ok(1400));
    assert!(parse_mtu("67").is_err());
    assert!(parse_mtu("65536").is_err());
    assert_eq!("none".parse::<Mode>(), Ok(Mode::None));
    assert!("host".parse::<Mode>().unwrap_err().contains("veth, none"));
    assert_eq!(NetworkSettings::default().mode(), Mode::Veth);
}

#[test]
fn mtu_setting_beats_the_outer_default_route_then_1500() {
    let mut s = NetworkSettings::default();
    assert_eq!(Plan::new("w", &s).mtu(Some(1400)), 1400);
    assert_eq!(Plan::new("w", &s).mtu(None), FALLBACK_MTU);
    s.mtu = Some(1300);
    assert_eq!(Plan::new("w", &s).mtu(Some(1400)), 1300);
}

#[test]
fn interface_names_fit_ifnamsiz_and_differ_per_workspace() {
    let long = "w".repeat(64);
    let a = Plan::new(&long, &NetworkSettings::default());
    let b = Plan::new("other", &NetworkSettings::default());
    for name in [&a.outer_if, &a.peer_if, &b.outer_if, &b.peer_if] {
        assert!(name.len() <= 15, "{name}");
    }
    assert_ne!(a.outer_if, b.outer_if);
    assert_ne!(a.outer_if, a.peer_if);
    assert_eq!(
        a.outer_if,
        Plan::new(&long, &NetworkSettings::default()).outer_if,
        "stable across runs"
    );
}

#[test]
fn rules_nat_the_subnet_and_tag_each_with_the_workspace() {
    let plan = Plan::new("ws1", &NetworkSettings::default());
    let rules = plan.rules();
    let args: Vec<String> = rules.iter().map(|r| r.add_args().join(" ")).collect();
    let o = &plan.outer_if;
    assert_eq!(
        args,
        [
            "-w -t nat -A POSTROUTING -s 172.19.0.0/30 ! -d 172.19.0.0/30 -m comment --comment cvmd:ws1 -j MASQUERADE".to_string(),
            format!("-w -t filter -I FORWARD -i {o} -m comment --comment cvmd:ws1 -j ACCEPT"),
            format!("-w -t filter -I FORWARD -o {o} -m comment --comment cvmd:ws1 -j ACCEPT"),
            format!("-w -t raw -A PREROUTING -i {o} -d 127.0.0.0/8 -m comment --comment cvmd:ws1 -j DROP"),
            format!("-w -t raw -A PREROUTING -i {o} -s 127.0.0.0/8 -m comment --comment cvmd:ws1 -j DROP"),
            format!("-w -t filter -I FORWARD -i {o} -d 169.254.0.0/16 -m comment --comment cvmd:ws1 -j DROP"),
            format!("-w -t filter -I INPUT -i {o} -d 169.254.0.0/16 -m comment --comment cvmd:ws1 -j DROP"),
        ]
    );
    let none = NetworkSettings {
        mode: Some(Mode::None),
        ..Default::default()
    };
    assert!(Plan::new("ws1", &none).rules().is_empty());
}

#[test]
fn port_forwards_dnat_from_outside_and_from_the_outer_container() {
    let s = NetworkSettings {
        ports: parse_ports("8080:80,5353:53/udp").unwrap(),
        ..Default::default()
    };
    let plan = Plan::new("ws1", &s);
    let o = &plan.outer_if;
    let args: Vec<String> = plan
        .rules()
        .iter()
        .skip(7)
        .map(|r| r.add_args().join(" "))
        .collect();
    assert_eq!(
        args,
        [
            format!("-w -t nat -A POSTROUTING -o {o} -s 127.0.0.0/8 -m comment --comment cvmd:ws1 -j MASQUERADE"),
            format!("-w -t nat -A PREROUTING ! -i {o} -p tcp --dport 8080 -m addrtype --dst-type LOCAL -m comment --comment cvmd:ws1 -j DNAT --to-destination 172.19.0.2:80"),
            "-w -t nat -A OUTPUT -p tcp --dport 8080 -m addrtype --dst-type LOCAL -m comment --comment cvmd:ws1 -j DNAT --to-destination 172.19.0.2:80".to_string(),
            format!("-w -t nat -A PREROUTING ! -i {o} -p udp --dport 5353 -m addrtype --dst-type LOCAL -m comment --comment cvmd:ws1 -j DNAT --to-destination 172.19.0.2:53"),
            "-w -t nat -A OUTPUT -p udp --dport 5353 -m addrtype --dst-type LOCAL -m comment --comment cvmd:ws1 -j DNAT --to-destination 172.19.0.2:53".to_string(),
        ]
    );
}

#[test]
fn deletions_take_exactly_this_workspaces_rules() {
    // As iptables-nft 1.8.9 lists them (comments quoted).
    let listing = r#"-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-A PREROUTING ! -i cvm1 -p tcp -m tcp --dport 8080 -m addrtype --dst-type LOCAL -m comment --comment "cvmd:ws1" -j DNAT --to-destination 172.19.0.2:80
-A POSTROUTING -s 172.19.0.0/30 ! -d 172.19.0.0/30 -m comment --comment "cvmd:ws10" -j MASQUERADE
-A POSTROUTING -s 10.0.0.0/8 -m comment --comment "someone else's rule" -j MASQUERADE
-A POSTROUTING -s 172.19.0.0/30 ! -d 172.19.0.0/30 -m comment --comment cvmd:ws1 -j MASQUERADE"#;
    let d: Vec<String> = deletions(Table::Nat, listing, "cvmd:ws1")
        .iter()
        .map(|a| a.join(" "))
        .collect();
    assert_eq!(
        d,
        [
            "-w -t nat -D PREROUTING ! -i cvm1 -p tcp -m tcp --dport 8080 -m addrtype --dst-type LOCAL -m comment --comment cvmd:ws1 -j DNAT --to-destination 172.19.0.2:80",
            "-w -t nat -D POSTROUTING -s 172.19.0.0/30 ! -d 172.19.0.0/30 -m comment --comment cvmd:ws1 -j MASQUERADE",
        ]
    );
}

#[test]
fn split_words_handles_quotes_and_escapes() {
    assert_eq!(
        split_words(r#"-A X --comment "a b \"c\"" -j Y"#),
        ["-A", "X", "--comment", "a b \"c\"", "-j", "Y"]
    );
    assert_eq!(split_words(r#"--comment """#), ["--comment", ""]);
}

#[test]
fn subnet_conflicts_with_overlapping_outer_networks_only() {
    let s = Subnet::default();
    let a = |v: &str| -> (Ipv4Addr, u8) {
        let (ip, p) = v.split_once('/').unwrap();
        (ip.parse().unwrap(), p.parse().unwrap())
    };
    assert_eq!(conflict(&s, &[a("127.0.0.1/8"), a("10.0.0.5/24")]), None);
    assert_eq!(
        conflict(&s, &[a("10.0.0.5/24"), a("172.16.3.4/12")]),
        Some(a("172.16.3.4/12"))
    );
    assert_eq!(
        conflict(&s, &[a("172.19.0.3/32")]),
        Some(a("172.19.0.3/32"))
    );
    assert_eq!(conflict(&s, &[a("172.19.0.4/30")]), None);
}

#[test]
fn loopback_martians_are_dropped_with_and_without_port_forwards() {
    for ports in ["", "8080:80"] {
        let s = NetworkSettings {
            ports: parse_ports(ports).unwrap(),
            allow_link_local: true,
            ..Default::default()
        };
        let plan = Plan::new("ws1", &s);
        let raw: Vec<String> = plan
            .rules()
            .iter()
            .filter(|r| r.table == Table::Raw)
            .map(|r| r.add_args().join(" "))
            .collect();
        let o = &plan.outer_if;
        assert_eq!(
            raw,
            [
                format!("-w -t raw -A PREROUTING -i {o} -d 127.0.0.0/8 -m comment --comment cvmd:ws1 -j DROP"),
                format!("-w -t raw -A PREROUTING -i {o} -s 127.0.0.0/8 -m comment --comment cvmd:ws1 -j DROP"),
            ],
            "ports {ports:?}"
        );
        // allow_link_local opens 169.254/16: no filter drop then.
        assert!(plan
            .rules()
            .iter()
            .all(|r| !r.spec.contains(&LINK_LOCAL_NET.to_string())));
    }
}

#[test]
fn link_local_nameservers_keep_port_53_ahead_of_the_drop() {
    let mut plan = Plan::new("ws1", &NetworkSettings::default());
    plan.link_local_dns = link_local_nameservers(
        "nameserver 169.254.20.10\nnameserver 10.96.0.10\n# nameserver 169.254.1.1\n",
    );
    assert_eq!(plan.link_local_dns, [Ipv4Addr::new(169, 254, 20, 10)]);
    let o = plan.outer_if.clone();
    // Each is inserted at the top: the last added comes first in the chain.
    let forward: Vec<String> = plan
        .rules()
        .iter()
        .filter(|r| r.chain == "FORWARD")
        .rev()
        .map(|r| r.add_args().join(" "))
        .collect();
    assert_eq!(
        forward,
        [
            format!("-w -t filter -I FORWARD -i {o} -d 169.254.20.10 -p tcp --dport 53 -m comment --comment cvmd:ws1 -j ACCEPT"),
            format!("-w -t filter -I FORWARD -i {o} -d 169.254.20.10 -p udp --dport 53 -m comment --comment cvmd:ws1 -j ACCEPT"),
            format!("-w -t filter -I FORWARD -i {o} -d 169.254.0.0/16 -m comment --comment cvmd:ws1 -j DROP"),
            format!("-w -t filter -I FORWARD -o {o} -m comment --comment cvmd:ws1 -j ACCEPT"),
            format!("-w -t filter -I FORWARD -i {o} -m comment --comment cvmd:ws1 -j ACCEPT"),
        ]
    );
}
