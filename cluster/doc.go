// Package cluster is the agreement of quorumproxy: several proxies in front
// of the same active-passive services agree, by a majority of a static,
// named peer list, on which backend each service routes to, and no two of
// them ever forward one service to different backends at the same instant.
//
// The protocol is a deterministic state machine per proxy ([Machine]) behind
// three small interfaces: a [Clock] (CLOCK_BOOTTIME, [BootClock]), a
// [Transport] (payloads to one peer, gossip to all) and a [Store] (atomic,
// durable state, [FileStore]). Its inputs are payloads from peers (Step),
// the passage of time (Tick, every LeaseTimeout/8; and TickDue at the end
// of a step for the services whose view of a backend changed in it, so a
// failover starts once a quorum sees the primary down rather than at the
// next tick), this proxy's own health view (Observe) and
// operator switchovers; its outputs are payloads, saves (always completed
// before the payloads or actions that depend on them), the route
// ([Machine.Route]) and the OnRecord/OnAction callbacks. A deterministic
// simulation (sim_test.go) drives this same code with fake clocks, a fake
// network, crashes, failing disks and databases with roles over thousands
// of seeds.
//
// Typical use: [Start] opens state_dir, builds the [Node] that runs the
// Machine on its own goroutine, and joins the gossip; the daemon feeds it
// health observations and asks it for routes:
//
//	g := cluster.GossipConfig{Bind: self, Advertise: self, Peers: peers, SecretKeyFile: keyFile,
//		GossipInterval: 200 * time.Millisecond, ProbeInterval: time.Second, RejoinInterval: 10 * time.Second}
//	// cfg sets every timing (the package has no defaults); cfg.OnAction runs the hooks.
//	rt, err := cluster.Start(cfg, g, stateDir, cluster.NodeOptions{OnRoute: applyRoute})
//	if err != nil {
//		return err
//	}
//	defer rt.Close()
//	rt.Observe("db", "pg-a", cluster.Observation{Up: true, Role: cluster.RolePrimary, Position: -1}) // on every health change
//	backend, remaining := rt.Route("db")                     // before dialling; "" = hold or refuse
//	rt.ActionDone("db", action, result)                      // after OnAction's hook ran and the backend was checked
//
// [NewNode] with a [Store] and a [Transport] of one's own runs the same
// Node without memberlist (the tests do).
//
// # Protocol
//
// Membership. Config.Peers names every proxy; N = len(Peers) and the quorum
// is Q = N/2+1 distinct configured names, counted against N whoever is
// alive. Payloads from other names are dropped and counted (the transport
// also checks cluster label, boot id and config hash).
//
// State. For each service a proxy persists its routing record
// (epoch, value; a value is the primary and the fenced set, below), the highest epoch it voted in (MaxVoted) with the proposer it went to, the highest epoch whose
// value it accepted (Accepted) and a hook intent. Store.Save is atomic and
// durable and never lowers an epoch. Saves are grouped: everything one
// step (an input, or a batch of them: [Machine.Batch]) changed is saved
// once when it ends, and only then does what it sends leave, one payload
// per peer ([MaxBatchSize]). A corrupt state file stops the start
// ([ErrCorruptState]). A store that was never written starts the proxy
// recovering: it neither votes nor confirms leases; after waiting out the
// life of any proposal that may have counted a vote it forgot
// ((VoteTimeout + commit wait + LeaseTimeout)×(1+ρ)/(1−ρ)) it learns records and votes from N-Q+1 peers that are not
// recovering themselves (or from all N-1 peers: a new cluster, which
// therefore needs every configured proxy up once before its first epoch)
// and takes the maximum.
//
// Observations. Each proxy gossips its view of every backend (up, role,
// lag) keyed by (boot id, sequence), and sends a change straight to every
// peer as well (best effort), since a failover waits for Q proxies to see
// the primary down and gossip adds up to an interval per hop; older or replayed views are dropped
// (a lower boot id is accepted only after the peer was silent for a whole
// TTL, in case its wall clock went back across a restart), and a view
// counts for ObservationTTL after it was received. A backend is
// objectively down when Q proxies, this one included, freshly report it
// down; healthy when Q, this one included, freshly report it up. A single
// proxy's view moves nobody.
//
// Proposal (phase 1). A proxy proposes when the primary is objectively
// down (failover, to the best candidate: for a role-aware service the one
// other backend that already reports primary if there is one, and none if
// there are two; else healthy in a quorum's view, a replica when
// role-aware, within MaxLagOnFailover, then highest priority, then least
// lag; none means no proposal and a loud status), when there is no primary
// yet (bootstrap: for a role-aware service the one backend that reports
// primary, once every backend has been checked, whatever the priorities;
// with none or two, nothing: the status says so and an operator's
// switchover chooses; without roles, the highest-priority backend it sees
// up), when an operator asks (switchover, fence, unfence), when the promote
// of its own decision failed and the backend is known not to be primary
// (move on, below), when the record's primary reports replica while
// another backend reports primary (roles are facts, below), or for
// liveness (below). It picks
// E = max(record, MaxVoted)+1, votes for itself (MaxVoted = E, which stops
// its own routing of the service at once), saves that, then sends the
// proposal (epoch, value, kind, the primary it replaces, its record epoch
// as base) to every peer, retrying until answered or VoteTimeout.
//
// Vote. A voter grants a proposal only if it is not recovering, its disk
// works, E is above its MaxVoted and its record, the proposer's base is not
// below its record, and its own check agrees: for a failover it sees the
// old primary down; for a bootstrap the proposed backend is the one it
// sees reporting primary (without roles: the best one it sees up); for a
// switchover, a re-affirmation or a move after a failed promote the
// proposed backend is up (and a re-affirmation that moves the primary
// needs it to report primary while the record's primary does not; a move
// after a failed promote needs the failed backend not to report primary);
// for an operator's fence that moves the primary,
// the new primary is up (a value forced by an earlier vote and an unfence
// need no check). Except for those two, it refuses a primary that its own
// record has fenced; it always refuses a value whose primary is in its own
// fenced set, and an unfence that moves the primary. It sets MaxVoted = E, saves, which
// also stops its routing and its lease confirmations at older epochs, and
// replies with what it had accepted before. A duplicate of the proposal it
// voted for gets the same answer; a refusal carries its MaxVoted, Accepted
// and record, so the proposer learns records and earlier votes.
//
// Who proposes a failover (or a new cluster's first primary). Every proxy
// that sees the primary objectively down (or no primary yet) may propose,
// but a proxy waits one tick (LeaseTimeout/8) for each reachable peer with
// a higher name first, and a proxy that voted in the
// meantime does not propose. Usually the highest-named proxy proposes and
// every other votes for it, so all N vote and the commit needs no lease
// wait; when several propose at once the votes split, and the winner lacks
// some and waits out the commit wait. The delay keeps most failovers free
// of the commit wait (TestSimulationFailoverTime measures it; the figures
// are in docs/design.md). After its delay a proxy goes on waiting, for at
// most a lease more, while a higher-named peer sends proposals or accepts
// (for any service) within a quarter lease: a mass failover reaches the
// highest a batch at a time, and it proposes each batch in turn. It only
// delays proposals, so safety is untouched; a silent higher peer costs at
// most (N-1) ticks.
//
// Duels. Two proxies that see the same failure at once both propose
// E = max+1 and each votes for itself; in a bare quorum each then lacks the
// other's vote, and random backoff alone parted them only after many rounds
// (the simulation's progress bound failed on about 1 seed in 30,000). So a
// proposer still in phase 1 whose own vote at E went to itself gives that
// vote to a proposal at E from a higher-named proxy (if its checks agree)
// and drops its own proposal: ballots are ordered (epoch, name) for this one
// case. Only a proposer's vote for itself moves, and only before phase 2
// (which starts with its own acceptance), so the proposal it drops never
// sent an accept. A vote given to another proxy never moves: if it could,
// two proposals at one epoch could each gather Q votes and have different
// values accepted at that epoch, and a later phase 1 could not tell which
// one may have been chosen (the simulation finds that when the rule is
// switched off).
//
// Accept (phase 2). With Q votes the proposer applies the Paxos phase-1
// rule: if any voter had accepted a value at an epoch above the proposer's
// base, the highest such value is the one it must propose (it may have been
// chosen already). It accepts that value itself, saves, and sends it to
// every peer. A peer accepts (E, v) only from the proxy it voted for at E,
// or at an epoch above any vote it cast, and saves before it answers. One
// proposer at most gathers Q votes at an epoch, so each epoch has at most
// one value. (The founding design's vote carried the value at once. On its own that
// lets two proposers at one epoch split the votes between two values, after
// which no later proposer can tell which of them may have been chosen; the
// simulation found both a livelock and a wrongly forced value that way.
// Splitting the vote into a promise and an acceptance, as Paxos does, costs
// one round trip and removes the ambiguity.)
//
// Commit. With Q acceptances the proposer saves the record (E, v) and sends
// it to every peer. If every proxy voted for E or accepted its value (a
// proxy whose own check lagged refuses the vote, then accepts the resent
// accept), or answered, even refusing, with MaxVoted >= E (it voted for
// the other proposer of a duel at E) — each saved MaxVoted >= E before it
// answered, so none routes or confirms a lease at an older epoch — it
// commits at once; otherwise not
// before LeaseTimeout×(1+ρ)/(1−ρ) after the Q-th vote (ρ = ClockMargin). A
// proposal that takes longer than VoteTimeout to gather its quorum, or whose
// commit falls later than VoteTimeout + that wait (+ LeaseTimeout/2), is
// given up with a random backoff longer than the commit wait. Receivers
// save a higher record (never a lower one), relay the commit once, and
// every lease request carries the sender's record so that a proxy that
// missed a commit adopts it at the next request. The committing proxy and
// every adopter ask for a lease at once rather than at the next periodic
// request, so a switch routes about one round trip after the commit.
//
// Leases. Every LeaseTimeout/4 a proxy sends every peer a lease request for
// each service, with the nonce (boot id, counter) and its record. A peer
// confirms only if its record is that epoch and its MaxVoted is not above
// it. A proxy routes a service to its record's primary only while it holds a
// lease at its record's epoch: Q-1 distinct confirmations of one request,
// valid LeaseTimeout from the moment that request was sent, measured on its
// CLOCK_BOOTTIME, and only while its own MaxVoted is not above its record.
// Adopting a record is not a lease. On expiry, on_quorum_loss "close" stops
// routing; "keep" routes on to the last primary and voids the guarantee.
//
// Liveness. A proxy that has had no lease for VoteTimeout + commit wait +
// LeaseTimeout and hears from Q-1 peers proposes max+1 again: the value an
// earlier acceptance forces, or else the current primary if it sees it up
// (re-affirmation; for a role-aware service whose primary does not report
// primary, the one backend that does). So a proposer that dies after gathering votes cannot
// leave a service unrouted for ever. The rank delay (above) applies here
// too: proxies that lost their lease together, or voted together, all get
// here at the same moment, and in a bare quorum (the simulation found this
// at N=5 with three proxies left) their duels otherwise repeat in step.
//
// Actions on databases. The committing proxy saves an intent with the
// record (fence the old primary, promote the new one; only promote when
// the decision follows a backend that reports primary, or when an
// operator's switchover chose the first primary of a role-aware service;
// fence a standby an operator fenced; promote a primary that reports
// replica when a decision keeps it, since the decision that made it
// primary was not carried out) and carries it out one action at a time
// through OnAction, only while it holds a lease at that epoch, with
// QP_EPOCH as the fencing token; the runner checks the backend at once
// after each hook and reports through ActionDone. A crash before the
// intent is done acts on it again. The rules (actions.go):
//
//   - A promote is idempotent and verified: the runner skips the hook when
//     the backend already reports primary; afterwards the role it reports
//     decides, whatever the exit status (a service without roles goes by
//     the exit status).
//   - The decision's own fence runs first, unless the old primary already
//     reports replica, and not while the new primary is down here (it
//     would only take the last good backend away).
//   - No promote starts while another backend may be primary: one that
//     reports primary (in this proxy's own view, or a peer's when this
//     proxy cannot reach it), one whose promote of ours may still land, or,
//     without roles, the old primary or a fenced backend that is up. Such a
//     backend is fenced first by the fence hook (retried every max(hook
//     timeout, 3×LeaseTimeout)); failing that, the promote is held, the
//     status says why (promote_held), and when the blocking backend is the
//     one that reports primary, this proxy proposes to route to it instead
//     (nothing was promoted, so nothing is lost). A backend counts as not
//     primary once a fence hook on it succeeded (until it comes up again),
//     or while a quorum sees it down: the agreement fenced it from all
//     traffic, and one that is alive but cut off from every proxy is what
//     the fence hook is for.
//   - A proxy that stood still (a gap of more than LeaseTimeout/2 between
//     its inputs: SIGSTOP, a frozen VM) forgets which backends its fence
//     hooks fenced and starts no promote for ObservationTTL: until then its
//     own view of a backend is from before the pause (the checks report
//     changes only, and report one only after they ran again), and peers'
//     views heard before it still count, so a backend that came back as
//     primary meanwhile could pass for down. Found by the simulation once a
//     proxy's checks reported one backend at a time after a pause.
//   - A promote that was not verified may still land: for the settle
//     period (twice the hook timeout, at least the timeout plus
//     LeaseTimeout) after its hook ended its backend counts as maybe
//     primary. The proxy moves on to the next candidate only once it is
//     known not to be primary: a fence hook on it succeeded (run at once
//     when the hook failed; after the settle period when it exited 0), or,
//     with roles, it reported replica for the settle period. A service
//     without roles moves on only after a fence hook. Otherwise the
//     service stays on it, unrouted while it does not report primary, and
//     the status says what the operator must check. A backend that reports
//     primary after all ends it: promoted.
//   - With no other candidate, the promote is tried again (as carefully)
//     every max(hook timeout, 3×LeaseTimeout) while the backend is up.
//   - Roles are facts: a role-aware record whose primary has reported
//     replica for the settle period while exactly one other backend,
//     healthy in a quorum's view, reports primary is moved there (a
//     re-affirmation; voters check the roles themselves). And when nobody
//     carries out a promote (the committing proxy died, or lost its state)
//     a proxy that sees the record's primary reporting replica for the
//     settle period plus the liveness wait decides the same value again, so
//     that it acts on it.
//
// Pause. An operator's Pause is a voted epoch whose value is the record's
// with Paused set (Resume clears it); every other proposal keeps the
// record's flag. While the record is paused nobody proposes, and no voter
// grants, a failover, a first primary, a move after a failed promote or a
// re-affirmation that moves the primary; switchovers, fences, unfences and
// liveness re-affirmations of the same value go on.
//
// Operators see how it ended: Switchover and Fence return the id of an
// [Operation] that Status reports until it is done (committed, acted on,
// the new primary verified) or failed (dropped, given up, another
// decision first, a failed fence hook, a promote that did not verify).
//
// Disks that fail. Nothing is answered that is not on disk: a save that
// fails leaves the in-memory state as it was on disk, so a duplicate gets
// the answer that was saved, never one that was only in memory (a voter
// that kept an unsaved vote in memory once granted a resent proposal from
// it, and could vote twice in an epoch after a crash). The proxy then
// stops voting, proposing, confirming leases and routing, logs it once at
// ERROR, shows it in Status (StoreError), and probes the store every
// LeaseTimeout/4 until a save works again.
//
// Fencing. The agreed value is the primary and a set of fenced backends,
// which no failover, bootstrap or switchover may make primary. A failover
// of a service checked without roles adds the old primary to the set: once
// it is up again nothing else would keep it out of a later failover, and
// it may hold writes the new primary never saw (failback is
// manual). A role-aware service does not need that, since a candidate must
// report itself a replica, which a returned old primary does only once it
// was rebuilt or demoted. An operator's fence (Machine.Fence) adds a
// backend; if it is the primary the service moves to the best candidate in
// the same epoch (refused when there is none), and the intent runs the
// fence hook on it. An unfence removes one and keeps the primary. A
// switchover to a fenced backend is refused: unfence, then switch over.
// Fence and unfence are epochs like any other, so 1 to 4 below hold for
// them; like a switchover each is one attempt, ended by the first decision
// above the epochs known or voted for when it was asked for (left pending
// it could be carried out much later, on a cluster that had moved on, or
// undo a later decision). As for a switchover, an attempt given up after
// some peer accepted its value may still be finished by a later phase 1.
// The set travels in every record and ballot, in a canonical form (sorted,
// comma-joined names) so values compare as a whole. A value also carries
// Since, the epoch that made its primary the primary: a proxy that missed
// the records in between can then tell a later decision for the same
// backend (a new promote) from a re-affirmation of the one whose promote
// failed, and drops its pending move in the first case (the simulation
// found a move away from a freshly, successfully promoted primary without
// it).
//
// Moving on after a failed promote. Once the backend whose promote
// failed is known not to be primary (above), the proxy holds it out of its
// candidates for FailedPromoteHold (a timer, not a health signal, since a
// backend whose promote failed usually still reports itself a healthy
// replica) and, while its record still names that backend, proposes the
// next epoch with the next candidate (the failover choice above, without
// the primary and the held-out backends; a backend that a fence hook
// fenced, and any for a service without roles, joins the fenced set),
// through the whole usual path: its own vote stops its routing and is
// saved first, phase 1 (an earlier acceptance still forces the value), the
// commit wait, and a new intent. Voters check that the proposed backend is
// up and that the failed one does not report primary in their own view,
// and hold the failed backend (the proposal's From) out of their own
// candidates for the same time. A decision that names another primary
// ends it. Only the proxy that ran the hooks knows the promote failed, so
// if it dies the move waits for its restart (which acts on the intent
// again) or for another proxy to decide the value again (above).
//
// # Safety argument
//
// Claim: at most one value per (service, epoch); records and votes never go
// back on a proxy, across restarts; and at no real instant do two proxies
// forward a service to different backends — under partitions (also one-way
// and non-transitive), loss, delay, duplication, reordering, crashes and
// restarts, pauses, clock rates within 1±ρ, with at most N−Q proxies that
// lose their state at once, and on_quorum_loss "close".
//
//  1. One value per epoch. A proxy votes at most once per epoch (E must be
//     above MaxVoted, which is saved before the answer and never lowered),
//     except that a proposer's vote for itself may move to a higher-named
//     proposer at E while its own proposal has not reached phase 2, which
//     it then never does. So every vote at E counts toward at most one
//     proposal that reaches phase 2, at most one proposer gathers Q votes
//     at E and sends accepts at E, and a record at E is saved only from Q
//     acceptances of its one value.
//  2. No silent reversal. If (E, v) was chosen (Q acceptances) and a later
//     proposal with base below E gathers Q votes, one of its voters accepted
//     v at E, so the highest acceptance above the base the proposer hears is
//     at E or later, and by induction on epochs its value is v (the phase-1
//     rule). A proposal whose base is at or above E knows the record E and
//     is a new decision (failover, switchover) taken with that knowledge.
//  3. Leases never overlap a change. Take a lease at epoch e held from a
//     request sent at t and a commit at E > e. Any Q voters for E and the
//     Q proxies of that lease (holder and Q-1 confirmers) intersect. If the
//     intersection is the holder, it voted for E and stopped routing at e
//     then. Otherwise a confirmer confirmed (after t) before it voted (a
//     vote forbids later confirmations), so t is before the Q-th vote; the
//     lease ends by t + LeaseTimeout/(1−ρ) in real time, and the commit
//     waits LeaseTimeout×(1+ρ)/(1−ρ) on a clock running at most 1+ρ, that
//     is at least LeaseTimeout/(1−ρ) after the Q-th vote. If all N voted
//     or accepted, every proxy stopped routing at e before the commit (a
//     Node publishes the route a step changed before that step's messages
//     leave, and the data path reads the route before every dial and
//     write; see below for writes already under way). A lease at E needs
//     Q proxies whose record is E, so it starts after the commit. Leases at
//     epochs below e end likewise before e committed. So no two leases at
//     different epochs overlap, and one epoch has one primary.
//  4. Restarts. State is saved before every answer that depends on it, so
//     a restarted proxy remembers every vote and record it ever reported. A
//     proxy that lost its state waits until every proposal that may have
//     counted its forgotten vote has committed or been given up (recoverWait
//     exceeds a proposal's whole life on any clock within the margin), then
//     learns from N−Q+1 peers that are not recovering: any quorum that
//     voted or accepted includes one of them, so it learns a MaxVoted and an
//     Accepted at least as high as any that mattered.
//  5. No failover without a quorum seeing the primary down: a failover
//     proposal needs the primary objectively down at the proposer and Q
//     voters that each see it down themselves; switchovers, the liveness
//     re-affirmation and the move after a failed promote (which the
//     committing proxy alone can know of, as an operator alone knows of a
//     switchover) need the proposed backend up at every voter; an
//     operator's fence of the primary needs its successor up. Each is an
//     epoch like any other, so 1 to 4 hold for them unchanged.
//  6. A fenced backend is never made primary, and only an operator's
//     unfence takes one out of the set: every value a proxy builds from its
//     record keeps the record's set (a failover and a fence only add to
//     it), candidates skip it, and voters refuse a fenced primary. A forced
//     value comes from an acceptance above the new proposal's base; by the
//     induction of point 2 it was built from a record at or above that base,
//     or is the value chosen there, so it keeps the set too (the simulation
//     checks both at every commit, and finds a violation when fenced
//     backends are made candidates).
//  7. At the databases: no proxy starts a promote while another backend
//     that no fence hook fenced may be primary (reports primary, or has a
//     promote of ours under way), unless a quorum sees it down, nor for
//     ObservationTTL after it stood still; and a new
//     cluster's first primary is one that reports primary (for a service
//     with roles). The promote runs only under a lease at its epoch, after
//     the checks above on this proxy's own fresh view; a failed promote is
//     counted as maybe landed for the settle period; and the value carries
//     the fenced set (6). The simulation models databases with roles,
//     backends that restart as primary, fence hooks that fail, and
//     promotes that succeed, fail before promoting, promote and then report
//     failure, hang past their timeout or land late, and checks both at
//     every step; with each of those rules switched off it finds a second
//     primary.
//  8. Nothing is answered that is not on disk (above): the simulation
//     checks every vote, acceptance and proposal that leaves against the
//     disk, with disks that fail for a while.
//
// What this does not cover: a promote that lands later than the settle
// period after its hook ended (a hook should wait for the promotion it
// asks for, as pg_promote() does by default); a backend that is alive and
// primary but that a quorum of proxies cannot reach (the fence hook);
// clients that bypass the proxy; bytes already in
// the old primary's socket buffers when a process pause outlasts its lease,
// and a write the data path had begun before its route was cleared, which
// the route applier cuts by resetting the old primary's sessions (SO_LINGER
// 0, so unsent bytes are dropped) a moment later, possibly after an
// immediate commit (the fence hook, with QP_EPOCH as a token the database
// can check, covers both); writes an async primary acknowledged but never replicated;
// more than N−Q proxies losing their state at once (they may then forget a
// vote that mattered). A proxy whose state_dir was emptied cannot tell that
// from a new cluster, so a lone wiped cluster (every state_dir empty)
// restarts from epoch 0.
//
// # Running it
//
// [Node] runs a Machine on one goroutine fed by a channel: NewNode loads the
// state, Start(transport) runs it, and the transport's message handler is the
// Node itself (OnMessage, OnPeerChange, LocalState, MergeRemoteState never
// block and never save). Reliable sends leave from one goroutine per peer
// (a TCP dial to a dead peer must not stall the machine); lease traffic
// goes best effort when the transport offers SendBestEffort. Packet payloads
// (observations, lease requests and answers) are at most [MaxMessageSize]
// bytes and reliable ones at most [MaxReliableSize]; lists of services are
// split to fit, and a peer splits a lease answer that grew wider than the
// request foresaw (a fenced set naming a backend removed from the config).
// NewMachine refuses a service whose backend names could not fit a vote or
// a lease answer even when all are fenced. The health side calls Observe, the data path calls
// Route (an atomic read: backend and remaining lease), the admin API calls
// Switchover, Fence and Status.
//
// # Wire formats
//
// Every payload starts with its type and its format version. A proxy speaks
// a range of formats (this build: 5 and 6; 6 added an observation's
// replication position, synchronous standbys and upstream) and advertises
// it in its gossip node meta ([WireMeta], the payload of the mesh's meta
// envelope, which older builds ignore). It reads every format in its range
// and sends each peer the highest both speak: by the peer's advertised
// range; a peer that advertises none is an older build, which speaks
// exactly the format its payloads carry (until one arrives it is sent this
// build's highest). The state machine encodes in this build's highest
// format; what leaves for a peer of a lower one is rewritten on the way
// (one batch per peer from rewritten parts), an observation's gossip
// broadcast goes once per format in use under its own key, and the
// full-state sync, which memberlist hands to any peer, is written in the
// lowest format a peer is sent in. So a rolling upgrade, one proxy at a
// time, works across adjacent formats.
//
// What an older format lacks reads as unknown, never as a fact: a format-5
// observation has no position (-1, not fresh), no synchronous standbys
// (an empty mask, which the rpo = "zero" intersection skips) and no
// upstream. Ranking uses the furthest fresh read any proxy gives, so an
// older peer only adds nothing; the voters' rules (a replica behind, a
// standby not synchronous) read the voter's own checks only, so no
// older peer's view makes a voter refuse or grant. An older proposer ranks
// by its own rules, and a newer voter still refuses its candidate if its
// own fresh reads show it behind. The paused flag is in every format
// spoken (it came in 5), and that is why 4 is not: a proxy that cannot
// carry the flag would neither honour a pause nor keep it in the values it
// proposes, so reading "absent" as "not paused" would not be safe.
//
// A peer whose range does not overlap this proxy's is warned about once in
// words ("peer p3 speaks wire formats 7..8, this proxy 5..6: its messages
// are dropped; upgrade one proxy at a time"), sent nothing, and its
// payloads are dropped and counted (Counters.WireVersion): nothing it says
// moves a route.
//
// # Tests
//
// The simulation (sim_test.go: N = 3, 4, 5; 10,000 seeds by default,
// QP_SIM_SEEDS or -sim.seeds for more, QP_SIM_LONG=1 for longer runs,
// -sim.seed=K to trace one) models databases with roles, promotes that fail
// in four ways, fence hooks and disks that fail, and checks every rule
// above; with each rule switched off it must find a violation. The Node
// tests run the Machine in-process; cluster/internal/mesh is the
// memberlist transport; internal/chaos runs real processes in network
// namespaces; its TestRollingUpgradeAcrossWireFormats builds older proxies
// from the git history (the last of format 5, the last of format 6 before
// the negotiation) and replaces them by this build one proxy at a time,
// killing the primary with one, two and three upgraded.
// TestSimulationMixedWireFormats runs the simulation with each start of a
// proxy choosing between a format-5 stand-in (knob wireHi) and this build.
package cluster
