//! `pilotfish iptables`: Istio's interception rules.
//!
//! The same `nat` table rules as Istio's `istio-iptables` in REDIRECT mode: inbound TCP is
//! sent to the sidecar's 15006, outbound TCP to 15001, and the proxy's own traffic (uid/gid
//! 1337) is left alone so it does not loop.
use std::process::{Command, ExitCode};

#[derive(clap::Args, Debug, Clone)]
pub struct IptablesArgs {
    /// Print the iptables commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// uid the proxy runs as; its traffic is not redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// gid the proxy runs as; its traffic is not redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_gid: u32,
    /// Port inbound traffic is redirected to.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Port outbound traffic is redirected to.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Inbound ports not redirected (comma list).
    #[arg(long, default_value = "15090,15021,15020")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports not redirected (comma list).
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destination CIDRs not redirected (comma list).
    #[arg(long, default_value = "")]
    pub exclude_outbound_cidrs: String,
    /// Inbound ports redirected: `*` for all, or a comma list (empty: none).
    #[arg(long, default_value = "*")]
    pub include_inbound_ports: String,
    /// Also redirect the app's DNS (UDP 53, any destination) to the sidecar's DNS listener;
    /// the proxy's own lookups (its uid/gid) go out as they are.
    #[arg(long)]
    pub redirect_dns: bool,
    /// Where the sidecar answers DNS (127.0.0.1).
    #[arg(long, default_value_t = 15053)]
    pub dns_port: u16,
}

pub const OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";

pub const INBOUND: &str = "ISTIO_INBOUND";
pub const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const OUTPUT: &str = "ISTIO_OUTPUT";
pub const REDIRECT: &str = "ISTIO_REDIRECT";

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn ports(flag: &str, s: &str) -> anyhow::Result<Vec<String>> {
    list(s)
        .into_iter()
        .map(|p| {
            // Single ports or ranges `a:b`, as iptables takes them.
            let ok = p
                .split(':')
                .all(|x| !x.is_empty() && x.parse::<u16>().is_ok())
                && p.split(':').count() <= 2;
            if ok {
                Ok(p)
            } else {
                Err(anyhow::anyhow!("--{flag}: {p:?} is not a port"))
            }
        })
        .collect()
}

fn cidrs(flag: &str, s: &str) -> anyhow::Result<Vec<String>> {
    list(s)
        .into_iter()
        .map(|c| {
            let (ip, len) = c.split_once('/').unwrap_or((c.as_str(), ""));
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|_| anyhow::anyhow!("--{flag}: {c:?} is not a CIDR"))?;
            if ip.is_ipv6() {
                anyhow::bail!("--{flag}: {c:?} is IPv6; only IPv4 is supported");
            }
            if !len.is_empty() && len.parse::<u8>().map_or(true, |l| l > 32) {
                anyhow::bail!("--{flag}: {c:?} has a bad prefix length");
            }
            Ok(c)
        })
        .collect()
}

fn r(args: &[&str]) -> Vec<String> {
    let mut v = vec!["-t".to_string(), "nat".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// The iptables argument lists, in order, after checking the flags.
pub fn try_rules(a: &IptablesArgs) -> anyhow::Result<Vec<Vec<String>>> {
    let excl_in = ports("exclude-inbound-ports", &a.exclude_inbound_ports)?;
    let excl_out = ports("exclude-outbound-ports", &a.exclude_outbound_ports)?;
    let excl_cidrs = cidrs("exclude-outbound-cidrs", &a.exclude_outbound_cidrs)?;
    let include_all = a.include_inbound_ports.trim() == "*";
    let incl_in = if include_all {
        vec![]
    } else {
        ports("include-inbound-ports", &a.include_inbound_ports)?
    };
    let uid = a.proxy_uid.to_string();
    let gid = a.proxy_gid.to_string();
    let in_port = a.inbound_port.to_string();
    let out_port = a.outbound_port.to_string();

    let mut v = vec![
        r(&["-N", INBOUND]),
        r(&["-N", IN_REDIRECT]),
        r(&["-N", OUTPUT]),
        r(&["-N", REDIRECT]),
        r(&[
            "-A",
            REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &out_port,
        ]),
        r(&[
            "-A",
            IN_REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &in_port,
        ]),
    ];

    // Inbound.
    if include_all || !incl_in.is_empty() {
        v.push(r(&["-A", "PREROUTING", "-p", "tcp", "-j", INBOUND]));
    }
    if include_all {
        for p in &excl_in {
            v.push(r(&[
                "-A", INBOUND, "-p", "tcp", "--dport", p, "-j", "RETURN",
            ]));
        }
        v.push(r(&["-A", INBOUND, "-p", "tcp", "-j", IN_REDIRECT]));
    } else {
        for p in &incl_in {
            v.push(r(&[
                "-A",
                INBOUND,
                "-p",
                "tcp",
                "--dport",
                p,
                "-j",
                IN_REDIRECT,
            ]));
        }
    }

    // Outbound.
    v.push(r(&["-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT]));
    // Inbound passthrough from the proxy (source 127.0.0.6) goes straight to the app.
    v.push(r(&[
        "-A",
        OUTPUT,
        "-o",
        "lo",
        "-s",
        "127.0.0.6/32",
        "-j",
        "RETURN",
    ]));
    for (kind, id) in [("--uid-owner", &uid), ("--gid-owner", &gid)] {
        // The proxy calling its own pod IP: treat as inbound.
        v.push(r(&[
            "-A",
            OUTPUT,
            "!",
            "-d",
            "127.0.0.1/32",
            "-o",
            "lo",
            "-m",
            "owner",
            kind,
            id,
            "-j",
            IN_REDIRECT,
        ]));
        // The app talking to itself over lo (not through the proxy): leave it.
        v.push(r(&[
            "-A", OUTPUT, "-o", "lo", "-m", "owner", "!", kind, id, "-j", "RETURN",
        ]));
        // The proxy's own upstream traffic.
        v.push(r(&["-A", OUTPUT, "-m", "owner", kind, id, "-j", "RETURN"]));
    }
    v.push(r(&["-A", OUTPUT, "-d", "127.0.0.1/32", "-j", "RETURN"]));
    for c in &excl_cidrs {
        v.push(r(&["-A", OUTPUT, "-d", c, "-j", "RETURN"]));
    }
    for p in &excl_out {
        v.push(r(&[
            "-A", OUTPUT, "-p", "tcp", "--dport", p, "-j", "RETURN",
        ]));
    }
    v.push(r(&["-A", OUTPUT, "-j", REDIRECT]));
    if a.redirect_dns {
        let port = a.dns_port.to_string();
        v.push(r(&["-N", OUTPUT_DNS]));
        v.push(r(&[
            "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", OUTPUT_DNS,
        ]));
        for (kind, id) in [("--uid-owner", &uid), ("--gid-owner", &gid)] {
            v.push(r(&[
                "-A", OUTPUT_DNS, "-m", "owner", kind, id, "-j", "RETURN",
            ]));
        }
        v.push(r(&[
            "-A",
            OUTPUT_DNS,
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ]));
    }
    Ok(v)
}

/// The iptables argument lists (nat table) Istio's istio-iptables applies, in order.
/// Malformed flags give an empty list; `run` reports them.
pub fn rules(a: &IptablesArgs) -> Vec<Vec<String>> {
    try_rules(a).unwrap_or_default()
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=*!|".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The rules as shell command lines.
pub fn render(a: &IptablesArgs) -> anyhow::Result<String> {
    let mut out = String::new();
    for rule in try_rules(a)? {
        out.push_str("iptables");
        for arg in &rule {
            out.push(' ');
            out.push_str(&shell_quote(arg));
        }
        out.push('\n');
    }
    Ok(out)
}

pub fn run(a: IptablesArgs) -> anyhow::Result<ExitCode> {
    if a.dry_run {
        print!("{}", render(&a)?);
        return Ok(ExitCode::SUCCESS);
    }
    for rule in try_rules(&a)? {
        let line = format!("iptables {}", rule.join(" "));
        let out = Command::new("iptables").args(&rule).output().map_err(|e| {
            anyhow::anyhow!("running `{line}`: {e} (is iptables installed and on PATH?)")
        })?;
        if !out.status.success() {
            anyhow::bail!(
                "`{line}` failed ({}): {} (rules applied before this one are left in place; \
                 NET_ADMIN is needed, and the chains must not exist yet)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: IptablesArgs,
    }

    fn parse(args: &[&str]) -> IptablesArgs {
        let mut v = vec!["iptables"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parse").a
    }

    fn lines(a: &IptablesArgs) -> Vec<String> {
        rules(a).iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn dns_redirect_spares_the_proxy() {
        let got = lines(&parse(&["--redirect-dns"]));
        let tail: Vec<&str> = got.iter().rev().take(5).rev().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "-t nat -N ISTIO_OUTPUT_DNS",
                "-t nat -A OUTPUT -p udp --dport 53 -j ISTIO_OUTPUT_DNS",
                "-t nat -A ISTIO_OUTPUT_DNS -m owner --uid-owner 1337 -j RETURN",
                "-t nat -A ISTIO_OUTPUT_DNS -m owner --gid-owner 1337 -j RETURN",
                "-t nat -A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-ports 15053",
            ]
        );
        assert!(!lines(&parse(&[])).iter().any(|l| l.contains("udp")));
    }

    #[test]
    fn default_rules_match_istio() {
        let got = lines(&parse(&[]));
        let want = [
            "-t nat -N ISTIO_INBOUND",
            "-t nat -N ISTIO_IN_REDIRECT",
            "-t nat -N ISTIO_OUTPUT",
            "-t nat -N ISTIO_REDIRECT",
            "-t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-t nat -A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-t nat -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
            "-t nat -A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
            "-t nat -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
            "-t nat -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            "-t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT",
            "-t nat -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            "-t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-t nat -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
            "-t nat -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-t nat -A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
            "-t nat -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-t nat -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn exclusions_and_custom_ids() {
        let a = parse(&[
            "--proxy-uid",
            "101",
            "--proxy-gid",
            "102",
            "--inbound-port",
            "16006",
            "--outbound-port",
            "16001",
            "--exclude-inbound-ports",
            "22",
            "--exclude-outbound-ports",
            "5432, 6379",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,169.254.169.254/32",
        ]);
        let got = lines(&a);
        assert!(
            got.contains(&"-t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001".into())
        );
        assert!(
            got.contains(&"-t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006".into())
        );
        assert!(got.contains(&"-t nat -A ISTIO_INBOUND -p tcp --dport 22 -j RETURN".into()));
        assert!(!got.iter().any(|l| l.contains("--dport 15021")));
        assert!(got.contains(&"-t nat -A ISTIO_OUTPUT -m owner --uid-owner 101 -j RETURN".into()));
        assert!(got.contains(&"-t nat -A ISTIO_OUTPUT -m owner --gid-owner 102 -j RETURN".into()));
        let tail: Vec<_> = got[got.len() - 6..].to_vec();
        assert_eq!(
            tail,
            [
                "-t nat -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-t nat -A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN",
                "-t nat -A ISTIO_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-t nat -A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-t nat -A ISTIO_OUTPUT -p tcp --dport 6379 -j RETURN",
                "-t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            ]
        );
    }

    #[test]
    fn include_inbound_ports() {
        let got = lines(&parse(&["--include-inbound-ports", "8080,9090"]));
        assert!(got.contains(&"-t nat -A PREROUTING -p tcp -j ISTIO_INBOUND".into()));
        assert!(got
            .contains(&"-t nat -A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT".into()));
        assert!(got
            .contains(&"-t nat -A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT".into()));
        assert!(!got.contains(&"-t nat -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into()));

        let none = lines(&parse(&["--include-inbound-ports", ""]));
        assert!(!none.iter().any(|l| l.contains("PREROUTING")));
        assert!(none.last().unwrap().ends_with("-j ISTIO_REDIRECT"));
    }

    #[test]
    fn bad_flags_are_named() {
        let e = try_rules(&parse(&["--exclude-outbound-ports", "80,http"])).unwrap_err();
        assert!(e.to_string().contains("exclude-outbound-ports"), "{e}");
        assert!(e.to_string().contains("http"), "{e}");
        let e = try_rules(&parse(&["--exclude-outbound-cidrs", "10.0.0.0/40"])).unwrap_err();
        assert!(e.to_string().contains("exclude-outbound-cidrs"), "{e}");
        assert!(try_rules(&parse(&["--exclude-inbound-ports", "70000"])).is_err());
        assert!(rules(&parse(&["--include-inbound-ports", "x"])).is_empty());
    }

    #[test]
    fn dry_run_text() {
        let text = render(&parse(&["--dry-run"])).unwrap();
        assert!(text.starts_with("iptables -t nat -N ISTIO_INBOUND\n"));
        assert!(text.contains(
            "iptables -t nat -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN\n"
        ));
        assert_eq!(text.lines().count(), rules(&parse(&[])).len());
    }
}
