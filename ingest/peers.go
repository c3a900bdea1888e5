package ingest

import (
	"sync"

	"github.com/kvhygiene/kvh/internal/proc"
)

// Peers is the set of processes with an interposer connection, now and ever.
// The server fills it; the correlator and the GPU watcher ask it whether a
// process is covered, and the enforcer for the pidfd of a connected one.
// Safe for concurrent use.
type Peers struct {
	mu   sync.Mutex
	live map[int]*peer
	seen map[int]struct{}
}

type peer struct {
	n int
	h *proc.Handle
}

// NewPeers returns an empty set.
func NewPeers() *Peers {
	return &Peers{live: map[int]*peer{}, seen: map[int]struct{}{}}
}

func (p *Peers) add(h *proc.Handle) {
	p.mu.Lock()
	e := p.live[h.PID]
	if e == nil || e.h.Key() != h.Key() {
		e = &peer{h: h}
		p.live[h.PID] = e
	}
	e.n++
	p.seen[h.PID] = struct{}{}
	p.mu.Unlock()
}

func (p *Peers) remove(h *proc.Handle) {
	p.mu.Lock()
	if e := p.live[h.PID]; e != nil && e.h.Key() == h.Key() {
		if e.n--; e.n <= 0 {
			delete(p.live, h.PID)
		}
	}
	p.mu.Unlock()
}

// Connected reports whether pid has an interposer connection now.
func (p *Peers) Connected(pid int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live[pid] != nil
}

// Covered reports whether pid has, or ever had, an interposer connection.
func (p *Peers) Covered(pid int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.seen[pid]
	return ok
}

// Process returns the pidfd handle of pid's connected process, or nil.
func (p *Peers) Process(pid int) *proc.Handle {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.live[pid]; e != nil {
		return e.h
	}
	return nil
}
