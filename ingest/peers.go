package ingest

import "sync"

// Peers is the set of processes with an interposer connection, now and ever.
// The server fills it; the correlator and the GPU watcher ask it whether a
// process is covered. Safe for concurrent use.
type Peers struct {
	mu   sync.Mutex
	live map[int]int // pid -> open connections
	seen map[int]struct{}
}

// NewPeers returns an empty set.
func NewPeers() *Peers {
	return &Peers{live: map[int]int{}, seen: map[int]struct{}{}}
}

func (p *Peers) add(pid int) {
	p.mu.Lock()
	p.live[pid]++
	p.seen[pid] = struct{}{}
	p.mu.Unlock()
}

func (p *Peers) remove(pid int) {
	p.mu.Lock()
	if p.live[pid]--; p.live[pid] <= 0 {
		delete(p.live, pid)
	}
	p.mu.Unlock()
}

// Connected reports whether pid has an interposer connection now.
func (p *Peers) Connected(pid int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live[pid] > 0
}

// Covered reports whether pid has, or ever had, an interposer connection.
func (p *Peers) Covered(pid int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.seen[pid]
	return ok
}
