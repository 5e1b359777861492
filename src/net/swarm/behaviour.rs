//! The libp2p behaviour the actor owns and the swarm around it: gossipsub with peer scoring, kad,
//! identify, ping, connection limits and the catch-up request-response protocol.

use super::NetError;
use crate::config::NetConfig;
use crate::identity::Identity;
use crate::net::catchup::{self, CatchupRequest, CatchupResponse};
use crate::net::{PEERS_TOPIC, keys};
use libp2p::gossipsub::{self, IdentTopic, MessageId};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, connection_limits, identify, kad, noise, ping, tcp, yamux};
use std::time::Duration;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) limits: connection_limits::Behaviour,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) catchup: request_response::cbor::Behaviour<CatchupRequest, CatchupResponse>,
}

/// Scoring for every topic: invalid messages (Reject) are what costs; quiet topics cost nothing.
pub(super) fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.1,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // Squared count: 5 invalid messages in quick succession (-75) leave a peer just above the
        // graylist threshold (-80); the sixth gets everything it sends dropped unread.
        invalid_message_deliveries_weight: -3.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

fn gossip_behaviour(key: &libp2p::identity::Keypair, cfg: &NetConfig) -> Result<gossipsub::Behaviour, NetError> {
    let mesh_n = cfg.gossip_mesh_n.max(1) as usize;
    let mesh_n_low = (mesh_n * 2 / 3).max(1);
    let gcfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(cfg.gossip_heartbeat_ms))
        .mesh_n(mesh_n)
        .mesh_n_low(mesh_n_low)
        .mesh_n_high(mesh_n * 2)
        .mesh_outbound_min((mesh_n / 2).min(mesh_n_low))
        .gossip_lazy(mesh_n)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        // Room for the envelope (signature, key, topic) around the largest payload of any topic
        // (epoch proposals); each topic's own bound is checked by the daemon so that oversize
        // messages are Rejected and scored. Topics are joined at run time, so gossipsub's
        // per-topic limits (fixed when the behaviour is built) cannot carry them.
        .max_transmit_size(cfg.gossip_message_bytes_max.max(cfg.epoch_message_bytes_max) as usize + 4096)
        .message_id_fn(|m: &gossipsub::Message| MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
        .build()
        .map_err(|e| NetError::Gossip(e.to_string()))?;
    let mut g = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)
        .map_err(|e| NetError::Gossip(e.to_string()))?;
    let mut params = gossipsub::PeerScoreParams {
        app_specific_weight: 10.0,
        decay_interval: Duration::from_secs(1),
        ..Default::default()
    };
    // Every local test and testnet peer shares 127.0.0.1: colocation must not count there.
    params.ip_colocation_factor_whitelist.insert(std::net::Ipv4Addr::LOCALHOST.into());
    params.ip_colocation_factor_whitelist.insert(std::net::Ipv6Addr::LOCALHOST.into());
    params.topics.insert(IdentTopic::new(PEERS_TOPIC).hash(), topic_score_params());
    g.with_peer_score(params, gossipsub::PeerScoreThresholds::default()).map_err(NetError::Gossip)?;
    Ok(g)
}

pub(super) fn build_swarm(identity: &Identity, cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let kp = keys::libp2p_keypair(identity);
    let cfg2 = cfg.clone();
    let swarm = SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(move |key| {
            let gossipsub =
                gossip_behaviour(key, &cfg2).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let pid = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(StreamProtocol::new("/datanet/kad/1"));
            kcfg.set_query_timeout(Duration::from_secs(10));
            let mut kad = kad::Behaviour::with_config(pid, kad::store::MemoryStore::new(pid), kcfg);
            // Loopback peers have no confirmed external address; force server mode so that
            // they enter each other's routing tables.
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new("/datanet/1".into(), key.public()));
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(cfg2.peers_max * 2))
                    .with_max_established_incoming(Some(cfg2.peers_max))
                    .with_max_established_per_peer(Some(2))
                    .with_max_pending_incoming(Some(cfg2.peers_max)),
            );
            let catchup = request_response::cbor::Behaviour::with_codec(
                request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(catchup::REQUEST_BYTES_MAX)
                    .set_response_size_maximum(catchup::RESPONSE_BYTES_MAX),
                [(StreamProtocol::new(catchup::PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(15)),
            );
            Ok(Behaviour { limits, gossipsub, kad, identify, ping: ping::Behaviour::default(), catchup })
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(cfg.idle_connection_timeout_secs)))
        .build();
    Ok(swarm)
}
