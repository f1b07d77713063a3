package cluster

// quorum is the arithmetic of a static peer list of n proxies: Q = n/2+1
// distinct proxies decide, counted against n whoever is alive.
type quorum struct{ n int }

// size is Q.
func (q quorum) size() int { return q.n/2 + 1 }

// reached reports whether k distinct proxies (this one included) are a quorum.
func (q quorum) reached(k int) bool { return k >= q.size() }

// all reports whether k is every proxy.
func (q quorum) all(k int) bool { return k == q.n }

// leaseAcks is how many peers must confirm a lease request: the requester
// and they make a quorum.
func (q quorum) leaseAcks() int { return q.size() - 1 }

// syncFrom is how many peers a recovering proxy must hear from to learn
// every vote that counted: N-Q+1 of them intersect every quorum.
func (q quorum) syncFrom() int { return q.n - q.size() + 1 }

// lost reports whether refusals from k proxies leave too few to reach a
// quorum.
func (q quorum) lost(k int) bool { return k > q.n-q.size() }
