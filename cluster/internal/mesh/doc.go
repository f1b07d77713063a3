// Package mesh is quorumproxy's gossip transport: membership, failure
// detection and message delivery between the proxies of one cluster, on
// top of hashicorp/memberlist. The cluster package owns what the messages
// say; mesh owns who may talk, the envelope, and delivery.
//
// Membership is static: Config.Peers names every proxy. memberlist admits
// only those names (at their configured IP address, when one is given),
// and peers that memberlist declares dead are joined again every
// RejoinInterval, because memberlist stops probing a dead node and a long
// partition would otherwise never heal.
//
// Every message travels in an envelope: version, cluster label, sender
// name, sender boot id (random per process start), config hash, payload.
// Incoming envelopes from NotifyMsg and MergeRemoteState are checked, and
// garbage, truncated or oversized ones, other labels, other config hashes,
// unknown senders and unknown versions are dropped and counted (Stats), never
// fatal. Gossip is encrypted and authenticated with memberlist's keyring
// (Config.SecretKey) and labelled (memberlist's Config.Label).
//
// The mesh's own transport authenticates every UDP datagram (label, then
// AES-GCM with the key) before memberlist sees it, reading into one reused
// buffer, so a flood of garbage costs a decryption attempt per packet and
// never crowds lease and vote traffic out of memberlist's packet goroutine.
// Drops are logged at most once per DropLogInterval, with their counts,
// and memberlist's repeated warnings and errors likewise.
//
// A node's memberlist meta is an envelope too, whose payload is the
// protocol's own (Config.Meta: the cluster advertises the wire formats it
// speaks there); a Handler that implements MetaHandler is handed each
// peer's at its join and whenever it changes. Builds before Config.Meta
// ignore the payload, and are seen with an empty one.
//
// Delivery: Send (reliable, TCP) and SendBestEffort (one UDP packet) to a
// named peer, for proposals, votes, commits and lease requests; Broadcast
// through memberlist's TransmitLimitedQueue, where a newer broadcast with
// the same key replaces a queued older one, for observations; the
// handler's LocalState/MergeRemoteState for a joiner's full sync. The
// handler's callbacks run on one goroutine, in arrival order.
//
// memberlist reports its metrics to go-metrics' global sink, labelled with
// node (and cluster, when Label is set); the mesh adds mesh.sent and
// mesh.dropped (by reason) there too.
//
// Example:
//
//	m, err := mesh.New(mesh.Config{
//		NodeName:   "a",
//		Label:      "prod-db",
//		Peers:      []mesh.Peer{{"a", "10.0.0.1:7946"}, {"b", "10.0.0.2:7946"}, {"c", "10.0.0.3:7946"}},
//		SecretKey:  key, // from mesh.LoadKey
//		ConfigHash: hash,
//	}, handler)
//	if err != nil { ... }
//	defer m.Close()
//	err = m.Send("b", vote)
//
// For tests, Faults and FaultyTransport run real memberlist over loopback
// sockets with links that can be cut and healed.
package mesh
