//! Where a new pair listens. Its network namespace is this machine's own
//! when the engine shares it ([`Listen::Host`]: both servers listen on
//! 127.0.0.1, on ports picked here; no `docker-proxy` in the way of every
//! connection), else Docker's bridge, where PostgreSQL's container
//! publishes both ports ([`Listen::Bridge`]).

use bollard::Docker;

use crate::docker::{engine, network};
use crate::error::{Error, Result};
use crate::target::settings::{Network, Ports, StackSettings};

/// The host address the ports are published on: 127.0.0.1 when the engine
/// is local (`network::engine_is_local`), unless the settings ask for every
/// interface; every interface (`""`: 0.0.0.0 and `::`) for a remote engine,
/// whose published ports this machine reaches through the engine's address.
pub(crate) fn publish_ip(settings: &StackSettings, engine_is_local: bool) -> &'static str {
    if settings.publish_all_interfaces || !engine_is_local {
        ""
    } else {
        "127.0.0.1"
    }
}

/// Where a new pair listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    /// On this machine's network, 127.0.0.1 only.
    Host(Ports),
    /// On Docker's bridge, ports published on this host address (`""`:
    /// every interface).
    Bridge(&'static str),
}

/// How a new pair of `settings` listens: on the host network when asked,
/// or by default when the engine shares this machine's network and its
/// published ports answer on 127.0.0.1; else on the bridge.
pub(crate) async fn plan_listen(docker: &Docker, settings: &StackSettings) -> Result<Listen> {
    // The engine the crate resolved (as testcontainers does), not only DOCKER_HOST.
    let engine = engine().await?;
    let host = match settings.network {
        _ if settings.publish_all_interfaces => false,
        Network::Host => true,
        Network::Bridge => false,
        Network::Auto => {
            engine.published_host() == "127.0.0.1"
                && network::shares_host_network(engine, docker).await
        }
    };
    Ok(if host {
        Listen::Host(free_ports()?)
    } else {
        Listen::Bridge(publish_ip(settings, engine.is_local()))
    })
}

/// Two ports free on 127.0.0.1 now, picked at random below the kernel's
/// ephemeral range (where no connection's local port, nor Docker's
/// published ports, come from), so that they are still free when the
/// servers bind them a moment later.
fn free_ports() -> Result<Ports> {
    use rand::Rng;
    let (low, high) = ephemeral_range();
    // 10,000 ports below the range, else above it; with no room on either
    // side (a range of nearly every port), the kernel's own pick.
    let range = if low >= 12_000 {
        Some(low - 10_000..low)
    } else if high <= 63_000 {
        Some(high + 1..65_535)
    } else {
        None
    };
    let mut rng = rand::thread_rng();
    // Both held at once, so that they differ; released on return.
    let mut held: Vec<(u16, std::net::TcpListener)> = Vec::new();
    for _ in 0..200 {
        let port = range.clone().map_or(0, |r| rng.gen_range(r));
        let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let Ok(bound) = listener.local_addr() else {
            continue;
        };
        held.push((bound.port(), listener));
        if let [(postgres, _), (pgbouncer, _)] = held[..] {
            return Ok(Ports {
                postgres,
                pgbouncer,
                listen_addr: "127.0.0.1",
            });
        }
    }
    Err(Error::Stack {
        reason: format!(
            "no two free ports found on 127.0.0.1 ({}) for the stack on the host \
             network; free some, or set PGBF_NETWORK=bridge",
            range.map_or("the kernel's pick".to_string(), |r| format!(
                "{}..{}",
                r.start, r.end
            ))
        ),
    })
}

/// The kernel's ephemeral port range (`ip_local_port_range`), Linux's
/// default when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

#[cfg(test)]
mod tests {
    use super::{ephemeral_range, free_ports, publish_ip};
    use crate::docker::network::engine_is_local;
    use crate::target::settings::{Network, StackSettings};

    #[test]
    fn host_network_ports_are_two_free_loopback_ports_below_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        for _ in 0..20 {
            let ports = free_ports().unwrap();
            assert_ne!(ports.postgres, ports.pgbouncer);
            assert_eq!(ports.listen_addr, "127.0.0.1");
            for port in [ports.postgres, ports.pgbouncer] {
                // Outside the ephemeral range, where it has room.
                if low >= 12_000 || high <= 63_000 {
                    assert!(!(low..=high).contains(&port), "{port} in {low}..={high}");
                }
                // Free: released again, a server can bind it.
                std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            }
        }
    }

    // (A test of `target::settings`' PGBF_NETWORK, the setting `plan_listen`
    // reads; it belongs with target/settings.rs's tests.)
    #[test]
    fn the_network_setting_parses_and_names_the_variable_when_wrong() {
        assert_eq!("host".parse::<Network>().unwrap(), Network::Host);
        assert_eq!(" Bridge ".parse::<Network>().unwrap(), Network::Bridge);
        assert_eq!("auto".parse::<Network>().unwrap(), Network::Auto);
        let e = "hostt".parse::<Network>().unwrap_err().to_string();
        assert!(
            e.contains("PGBF_NETWORK") && e.contains("host or bridge"),
            "{e}"
        );
        // The default keeps the stack's key; a forced network changes it.
        let default = StackSettings::default();
        assert_eq!(
            default.clone().with_network(Network::Auto).key(),
            default.key()
        );
        assert_ne!(
            default.clone().with_network(Network::Bridge).key(),
            default.key()
        );
    }

    #[test]
    fn ports_are_private_unless_the_engine_is_remote_or_the_settings_ask() {
        let default = StackSettings::default();
        let all = StackSettings::default().with_publish_all_interfaces(true);
        let local = [
            "",
            "unix:///var/run/docker.sock",
            "unix:///home/me/.docker/run/docker.sock",
            "/var/run/docker.sock",
            "npipe:////./pipe/docker_engine",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2375",
        ];
        let remote = [
            "tcp://10.0.0.5:2376",
            "tcp://[::1]:2375",
            "tcp://127.0.0.2:2375",
            "tcp://docker.example:2375",
            "https://docker.example:2376",
            "ssh://me@docker.example",
            "not a url",
        ];
        let by_default = |host| publish_ip(&default, engine_is_local(host));
        let asked_all = |host| publish_ip(&all, engine_is_local(host));
        for host in local {
            assert_eq!(by_default(host), "127.0.0.1", "{host}");
            assert_eq!(asked_all(host), "", "{host}");
        }
        for host in remote {
            assert_eq!(by_default(host), "", "{host}");
            assert_eq!(asked_all(host), "", "{host}");
        }
    }
}
