package main

import (
	"crypto/sha256"
	"os"
	"time"
)

// policyWatch notices a changed policy file by its content, not its
// modification time: a Kubernetes ConfigMap volume replaces the file by
// swapping a symlink, which keeps neither the inode nor a newer mtime
// reliably, and a file rewritten with the same bytes is no change. A file
// that cannot be read is no change either; the agent keeps the policy in
// force, as a refused SIGHUP reload does.
type policyWatch struct {
	file   string
	last   [sha256.Size]byte
	ticker *time.Ticker
	ch     chan struct{}
	done   chan struct{}
}

// newPolicyWatch polls file every interval; with no file or no interval
// it never fires.
func newPolicyWatch(file string, interval time.Duration) *policyWatch {
	w := &policyWatch{file: file, ch: make(chan struct{}, 1), done: make(chan struct{})}
	if file == "" || interval <= 0 {
		return w
	}
	w.last, _ = sumFile(file)
	w.ticker = time.NewTicker(interval)
	go w.run()
	return w
}

func (w *policyWatch) run() {
	for {
		select {
		case <-w.done:
			return
		case <-w.ticker.C:
		}
		sum, ok := sumFile(w.file)
		if !ok || sum == w.last {
			continue
		}
		w.last = sum
		select {
		case w.ch <- struct{}{}:
		default: // a reload is already pending; it reads the newest file
		}
	}
}

func (w *policyWatch) changed() <-chan struct{} { return w.ch }

func (w *policyWatch) stop() {
	if w.ticker != nil {
		w.ticker.Stop()
		close(w.done)
	}
}

func sumFile(name string) ([sha256.Size]byte, bool) {
	b, err := os.ReadFile(name)
	if err != nil {
		return [sha256.Size]byte{}, false
	}
	return sha256.Sum256(b), true
}
