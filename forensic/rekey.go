package forensic

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// KindRekey hands the trail from one signing key (and MAC key) to the next.
// The record is written, MAC'd and sealed in the old key's epoch: the first
// checkpoint that covers it is signed by the old key (and cosigned by the
// new one); every later checkpoint is signed by the new key alone, and every
// later record carries a MAC under the new MAC key.
const KindRekey = "rekey"

// RekeyBody is the body of a rekey record. OldKey and NewKey are note
// verifier keys (as in kvh.pub); they are equal when only the MAC key
// changes. The MAC key ids are KeyID values (never the keys), empty on a
// trail without MACs.
type RekeyBody struct {
	OldKey      string `json:"old_key" doc:"verifier key (note vkey) of the key it retires, which signs the checkpoint that seals this record"`
	NewKey      string `json:"new_key" doc:"verifier key (note vkey) that signs every later checkpoint; equal to old_key when only the MAC key changes"`
	OldMACKeyID string `json:"old_mac_key_id,omitempty" doc:"id (8 hex digits, never the key) of the MAC key of the records up to and including this one"`
	NewMACKeyID string `json:"new_mac_key_id,omitempty" doc:"id of the MAC key of every later record"`
	Reason      string `json:"reason,omitempty" doc:"why the keys rotated (the agent's --rekey-reason)"`
}

// KeyEpoch is one signing key's stretch of the trail, as Verify found it.
type KeyEpoch struct {
	// Key names the signing key as its vkey begins (<name>+<hash>).
	Key string `json:"key"`
	// VKey is its verifier key when a rekey record names it.
	VKey string `json:"vkey,omitempty"`
	// FirstSeq..LastSeq are the records its checkpoints cover, inclusive.
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// MACKeyID is the MAC key id of the records in this epoch, when known;
	// MAC says whether their MACs were checked.
	MACKeyID string `json:"mac_key_id,omitempty"`
	MAC      string `json:"mac"`
	// RekeySeq is the rekey record that retired it; SealSize the size of
	// the checkpoint, signed by this key, that sealed that record.
	RekeySeq *uint64 `json:"rekey_seq,omitempty"`
	SealSize uint64  `json:"seal_size,omitempty"`
	// Trusted: the auditor gave this key; otherwise it was learned from an
	// authenticated rekey record.
	Trusted bool `json:"trusted"`
	// Pruned: the epoch ended before the first record still present.
	Pruned bool `json:"pruned,omitempty"`
}

// keySigner is a note signer that also knows its verifier key, which a
// rekey record names.
type keySigner struct {
	note.Signer
	vkey string
}

func (k keySigner) VerifierKey() string { return k.vkey }

// NewSigner parses a note signing key (the text of kvh.key). The signer it
// returns can name its verifier key in a rekey record (VerifierKeyOf).
func NewSigner(skey string) (note.Signer, error) {
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, err
	}
	vkey, err := verifierKeyFromSigning(skey)
	if err != nil {
		return nil, err
	}
	v, err := NewVerifier(vkey)
	if err != nil || v.KeyHash() != s.KeyHash() || v.Name() != s.Name() {
		return nil, errors.New("signing key: its public half does not match its key hash")
	}
	return keySigner{s, vkey}, nil
}

// VerifierKeyOf returns the note verifier key of a signer made by NewSigner
// or LoadSigner.
func VerifierKeyOf(s note.Signer) (string, error) {
	if k, ok := s.(interface{ VerifierKey() string }); ok {
		return k.VerifierKey(), nil
	}
	return "", fmt.Errorf("signer %s does not know its verifier key (load it with forensic.LoadSigner or NewSigner)", s.Name())
}

// verifierKeyFromSigning derives the vkey of an Ed25519 note signing key
// (PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>).
func verifierKeyFromSigning(skey string) (string, error) {
	rest, ok := strings.CutPrefix(skey, "PRIVATE+KEY+")
	parts := strings.SplitN(rest, "+", 3) // names never hold '+'; base64 may
	if !ok || len(parts) != 3 {
		return "", errors.New("malformed signing key")
	}
	name := parts[0]
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("signing key is not an Ed25519 note key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(name, pub)
}

// vkeyID names a verifier key as keyID does.
func vkeyID(v note.Verifier) string { return keyID(v.Name(), v.KeyHash()) }

// --- writer side ---

// rotation is what Open found it must do to move the trail to the keys it
// was given: write a rekey record (body) and seal it, or only seal one
// written before a crash (body nil).
type rotation struct {
	body   *RekeyBody
	oldMAC []byte
	cosign bool // the signing key changes: the old one signs the seal, the new one cosigns
}

// planRotation decides, after replay, whether the trail must change keys.
// signerOld: the latest checkpoint is the previous signer's. macOld: the
// last segment's current records are MAC'd with the previous MAC key.
// rekeyedTail: a rekey record to our signer is already in the unsealed tail.
func (l *Log) planRotation(signerOld, macOld, rekeyedTail bool) (*rotation, error) {
	if !signerOld && !macOld {
		return nil, nil
	}
	if rekeyedTail && !macOld {
		return &rotation{cosign: signerOld}, nil
	}
	oldSigner := l.opts.Signer
	if signerOld {
		oldSigner = l.opts.PreviousSigner
	}
	oldV, err := VerifierKeyOf(oldSigner)
	if err != nil {
		return nil, err
	}
	newV, err := VerifierKeyOf(l.opts.Signer)
	if err != nil {
		return nil, err
	}
	b := &RekeyBody{OldKey: oldV, NewKey: newV, Reason: l.opts.RekeyReason}
	r := &rotation{body: b, cosign: signerOld}
	if l.mac != nil {
		b.OldMACKeyID, b.NewMACKeyID = KeyID(l.opts.MACKey), KeyID(l.opts.MACKey)
		if macOld {
			b.OldMACKeyID, r.oldMAC = KeyID(l.opts.PreviousMACKey), l.opts.PreviousMACKey
		}
	}
	if b.Reason == "" {
		b.Reason = "key rotation"
	}
	return r, nil
}

// rekey writes the rekey record (under the old MAC key) and seals it with a
// checkpoint signed by the old signer and cosigned by the new one. It runs
// in Open, before the writer goroutines start.
func (l *Log) rekey(r *rotation) error {
	if r.body != nil {
		body, err := canonical(r.body)
		if err != nil {
			return err
		}
		err = l.encode(KindRekey, body) // under the old MAC key (recover set it)
		l.mac = newMAC(l.opts.MACKey)
		if err != nil {
			return err
		}
	}
	if r.cosign && !sameKey(l.opts.PreviousSigner, l.opts.Signer) {
		l.signers = []note.Signer{l.opts.PreviousSigner, l.opts.Signer}
	}
	err := l.flushSync()
	l.signers = nil
	if err == nil {
		l.stats.Rekeyed = r.body
		if r.body == nil {
			l.stats.Rekeyed = &RekeyBody{}
		}
	}
	return err
}

func sameKey(a, b note.Signer) bool { return a.Name() == b.Name() && a.KeyHash() == b.KeyHash() }

// replayMAC picks the MAC key for the last segment's first line, when a
// previous MAC key was given: the one its MAC verifies with.
func (l *Log) replayMAC(first []byte) ([]byte, bool) {
	if l.opts.PreviousMACKey == nil || l.mac == nil {
		return l.opts.MACKey, false
	}
	var p parsed
	if parseLine(first, &p) != nil || p.mac == nil {
		return l.opts.MACKey, false
	}
	if checkMAC(first, &p, newMAC(l.opts.MACKey)) {
		return l.opts.MACKey, false
	}
	if checkMAC(first, &p, newMAC(l.opts.PreviousMACKey)) {
		return l.opts.PreviousMACKey, true
	}
	return l.opts.MACKey, false
}

// replayRekey follows a rekey record met while replaying the last segment:
// the MAC key switches to the one it names, which must be one we hold.
func (l *Log) replayRekey(c *chain, body []byte) (macOld bool, toUs bool, err error) {
	var rb RekeyBody
	if err := strictUnmarshal(body, &rb); err != nil {
		return false, false, fmt.Errorf("malformed rekey record: %v", err)
	}
	nv, err := NewVerifier(rb.NewKey)
	if err != nil {
		return false, false, fmt.Errorf("malformed rekey record: new_key: %v", err)
	}
	toUs = vkeyID(nv) == keyID(l.opts.Signer.Name(), l.opts.Signer.KeyHash())
	if c.macAlg != MACAlgHMACSHA256 {
		return false, toUs, nil
	}
	switch rb.NewMACKeyID {
	case KeyID(l.opts.MACKey):
		c.setMAC(l.opts.MACKey)
		return false, toUs, nil
	case keyIDOrEmpty(l.opts.PreviousMACKey):
		c.setMAC(l.opts.PreviousMACKey)
		return true, toUs, nil
	}
	return false, toUs, fmt.Errorf("the trail moved to MAC key %s, which is neither the given HMAC key (%s) nor the previous one", rb.NewMACKeyID, KeyID(l.opts.MACKey))
}

func keyIDOrEmpty(k []byte) string {
	if k == nil {
		return "\x00none"
	}
	return KeyID(k)
}

// --- verifier side ---

// keyState is a signing key the verifier knows: given by the auditor
// (trusted, valid from the start) or learned from an authenticated rekey
// record (valid from the size where it took over). A retired key may sign
// nothing past the checkpoint that sealed its rekey record.
type keyState struct {
	v       note.Verifier
	vkey    string
	trusted bool
	from    uint64
	retired bool
	until   uint64
	rekey   uint64
}

func (k *keyState) validAt(size uint64) bool {
	return size >= k.from && (!k.retired || size <= k.until)
}

// pendingNote is a checkpoint signed by no key the verifier knows yet: a
// later rekey record may introduce its key.
type pendingNote struct {
	note []byte
	size uint64
	line int
	ext  bool
}

func (v *verifier) initKeys() {
	v.keys = map[string]*keyState{}
	for _, kv := range append([]note.Verifier{v.opts.Verifier}, v.opts.Keyring...) {
		if kv == nil {
			continue
		}
		v.keys[vkeyID(kv)] = &keyState{v: kv, trusted: true}
	}
	v.refreshKeys()
	v.macKeys = map[string][]byte{}
	for _, k := range append([][]byte{v.opts.MACKey}, v.opts.MACKeys...) {
		if k != nil {
			v.macKeys[KeyID(k)] = k
		}
	}
}

// refreshKeys rebuilds the list openNote verifies with (the walk is
// sequential: it changes only at a rekey record).
func (v *verifier) refreshKeys() {
	var vs []note.Verifier
	for _, k := range v.keys {
		vs = append(vs, k.v)
	}
	v.known, v.knownList = note.VerifierList(vs...), vs
}

// openNote opens a signed checkpoint with every key known so far. It
// returns nil, nil for a note signed only by unknown keys.
func (v *verifier) openNote(n []byte) (*log.Checkpoint, []string, error) {
	return v.openNoteWith(n, v.known)
}

func (v *verifier) openNoteWith(n []byte, known note.Verifiers) (*log.Checkpoint, []string, error) {
	nn, err := note.Open(n, known)
	var unknown *note.UnverifiedNoteError
	if errors.As(err, &unknown) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint signature does not verify with the given key: %v", err)
	}
	cp, err := v.parseCheckpointText(nn.Text)
	if err != nil {
		return nil, nil, err
	}
	var ids []string
	for _, s := range nn.Sigs {
		ids = append(ids, keyID(s.Name, s.Hash))
	}
	return cp, ids, nil
}

// signedAt reports whether a checkpoint of this size carries a signature
// by a key valid at that size, and if not, who signed it.
func (v *verifier) signedAt(size uint64) (bool, string) {
	for _, id := range v.sigs[size] {
		if k := v.keys[id]; k != nil && k.validAt(size) {
			return true, ""
		}
	}
	var why []string
	for _, id := range v.sigs[size] {
		if k := v.keys[id]; k != nil && k.retired {
			why = append(why, fmt.Sprintf("%s, retired by the rekey record at seq %d (sealed at size %d)", id, k.rekey, k.until))
		} else if k != nil {
			why = append(why, fmt.Sprintf("%s, which took over only at size %d", id, k.from))
		}
	}
	return false, strings.Join(why, "; ")
}

// notePending remembers the running root at a size an unverified
// checkpoint claims, so that it can be checked once its key is known.
func (v *verifier) notePending() {
	size := v.c.size()
	if v.pendAt[size] {
		v.seen[size] = v.c.root()
	}
}

// rekey follows a rekey record at seq (already accepted into the chain). It
// checks that the first checkpoint covering it is signed by the key it
// retires, which must be the current key (or, when the auditor trusts only
// the new key, cosigned by it), then hands the trail to the new key and MAC
// key, and checks the checkpoints that key signed.
//
// proved is set for a rekey record no longer in the trail (pruned), taken
// from a prune record: the root of the tree ending with it, which must be
// the root its seal signs.
func (v *verifier) rekey(seg string, line int, seq uint64, body []byte, proved []byte) error {
	var rb RekeyBody
	if err := strictUnmarshal(body, &rb); err != nil {
		return fail(seg, line, seqp(seq), "malformed rekey record: %v", err)
	}
	oldV, err1 := NewVerifier(rb.OldKey)
	newV, err2 := NewVerifier(rb.NewKey)
	if err := errors.Join(err1, err2); err != nil {
		return fail(seg, line, seqp(seq), "malformed rekey record: %v", err)
	}
	oldID, newID := vkeyID(oldV), vkeyID(newV)
	if proved == nil {
		if err := v.rekeyMAC(seg, line, seq, rb); err != nil {
			return err
		}
	}
	if v.cur != "" && oldID != v.cur {
		return fail(seg, line, seqp(seq), "rekey record retires key %s, but the current key is %s (a rekey record not written by the trail's writer)", oldID, v.cur)
	}
	epoch := KeyEpoch{Key: oldID, VKey: rb.OldKey, FirstSeq: v.epochStart, LastSeq: seq, RekeySeq: seqp(seq), MACKeyID: rb.OldMACKeyID, MAC: v.macState()}
	b := seq + 1
	if !v.opts.NoSignatures {
		seal, sealNotes, err := v.sealOf(b)
		if err != nil {
			return err
		}
		if sealNotes == nil {
			return fail(seg, line, seqp(seq), "rekey record to %s is not sealed: no signed checkpoint covers it", newID)
		}
		byOld := false
		for _, n := range sealNotes {
			nn, err := note.Open(n, note.VerifierList(oldV))
			if err != nil {
				continue
			}
			if proved != nil {
				cp, err := v.parseCheckpointText(nn.Text)
				if err != nil || seal != b || !bytes.Equal(cp.Hash, proved) {
					return fail(seg, line, seqp(seq), "pruned rekey record to %s does not match its seal (the checkpoint at size %d)", newID, b)
				}
			}
			byOld = true
		}
		if !byOld {
			return fail(seg, line, seqp(seq), "rekey record to %s is not sealed by the key it retires, %s (the checkpoint at size %d is not signed by it): forged rekey", newID, oldID, seal)
		}
		if k := v.keys[oldID]; k == nil || !k.validAt(seal) {
			// The old key is not one the auditor trusts (or it is retired):
			// the seal must carry a signature by a key valid there.
			if ok, _ := v.signedAt(seal); !ok {
				if len(v.sigs) == 0 {
					// Nothing so far was signed by a key given: the key is wrong.
					return fail(CheckpointFile, 0, nil, "checkpoint signature does not verify with the given key: no checkpoint up to the rekey record at seq %d (from %s to %s) is signed by a key given", seq, oldID, newID)
				}
				return fail(seg, line, seqp(seq), "rekey record from %s to %s is sealed by no key the auditor trusts (give the trail's original key, or a keyring holding one of its keys)", oldID, newID)
			}
		}
		if k := v.keys[oldID]; k == nil {
			v.keys[oldID] = &keyState{v: oldV, vkey: rb.OldKey}
		}
		if oldID != newID {
			k := v.keys[oldID]
			k.retired, k.until, k.rekey = true, seal, seq
			if v.keys[newID] == nil {
				v.keys[newID] = &keyState{v: newV, vkey: rb.NewKey, from: b}
			}
		}
		epoch.SealSize = seal
		epoch.Trusted = v.keys[oldID].trusted
		v.refreshKeys()
		if err := v.resolvePending(); err != nil {
			return err
		}
	}
	if proved != nil {
		epoch.MAC = "pruned"
	}
	v.rep.Keys = append(v.rep.Keys, epoch)
	v.cur, v.curVKey, v.epochStart = newID, rb.NewKey, b
	return nil
}

// RekeyProof is a rekey record kept by a prune record: its exact line and
// the Merkle frontier of the records before it, from which the root of the
// tree that ends with it follows, to be checked against its seal.
type RekeyProof struct {
	Seq      uint64   `json:"seq"`
	Record   []byte   `json:"record"`
	Frontier [][]byte `json:"frontier"`
}

// prunedRekeys follows the rekey records that pruned segments held, from
// the proofs the prune records carry (a prune record is the second record
// of the segment the pruning writer opened, so only segment heads are read;
// the walk verifies the prune records themselves later). Each is checked
// against its seal, so it needs no trust in the prune record.
func (v *verifier) prunedRekeys(segs []segFile) error {
	firstSeq := segs[0].head.Size
	byseq := map[uint64]RekeyProof{}
	for _, s := range segs {
		f, err := v.d.open(s.name, os.O_RDONLY, 0, false)
		if err != nil {
			return err
		}
		br := bufio.NewReaderSize(f, MaxLine+1)
		for i := 0; i < 3; i++ {
			line, err := readLine(br)
			if err != nil {
				break
			}
			var p parsed
			var pb PruneBody
			if parseLine(line, &p) != nil || string(p.kind) != KindPrune || strictUnmarshal(p.body, &pb) != nil {
				continue
			}
			for _, r := range pb.Rekeys {
				if r.Seq < firstSeq {
					byseq[r.Seq] = r
				}
			}
		}
		f.Close()
	}
	seqs := slices.Sorted(maps.Keys(byseq))
	for _, seq := range seqs {
		r := byseq[seq]
		where := "pruned rekey record (carried by a prune record)"
		var p parsed
		if err := parseLine(r.Record, &p); err != nil || p.seq != seq || string(p.kind) != KindRekey {
			return fail(where, 0, seqp(seq), "malformed")
		}
		// A copy: Append merges into the hashes it is given, and the
		// proof is carried again by the next prune record.
		rng, err := rangeFactory.NewRange(0, seq, slices.Clone(r.Frontier))
		if err != nil {
			return fail(where, 0, seqp(seq), "frontier: %v", err)
		}
		if err := rng.Append(rfc6962.DefaultHasher.HashLeaf(r.Record), nil); err != nil {
			return err
		}
		root, err := rng.GetRootHash(nil)
		if err != nil {
			return err
		}
		if err := v.rekey(where, 0, seq, p.body, root); err != nil {
			return err
		}
		v.rep.rekeyProofs = append(v.rep.rekeyProofs, r)
	}
	return nil
}

// sealOf returns the smallest local checkpoint size >= size and the notes
// of that size (unverified). Rekeys are rare, so it rereads the file.
func (v *verifier) sealOf(size uint64) (uint64, [][]byte, error) {
	data, err := v.d.readFile(CheckpointFile)
	if err != nil {
		return 0, nil, err
	}
	var best uint64
	var notes [][]byte
	for _, cl := range parseCheckpointLines(data) {
		if cl.Size < size || (notes != nil && cl.Size > best) {
			continue
		}
		if notes == nil || cl.Size < best {
			best, notes = cl.Size, nil
		}
		notes = append(notes, []byte(cl.Note))
	}
	return best, notes, nil
}

// resolvePending checks the checkpoints that waited for a key the verifier
// now knows: one for a size already passed against the root seen there, one
// for a size to come added to those the walk will match.
func (v *verifier) resolvePending() error {
	rest := v.pend[:0]
	for _, pn := range v.pend {
		cp, ids, err := v.openNote(pn.note)
		where, line := CheckpointFile, pn.line
		if pn.ext {
			where = "external checkpoint"
		}
		if err != nil {
			return fail(where, line, nil, "%v", err)
		}
		if cp == nil {
			rest = append(rest, pn)
			continue
		}
		v.sigs[cp.Size] = append(v.sigs[cp.Size], ids...)
		switch {
		case cp.Size < v.c.size():
			root, ok := v.seen[cp.Size]
			if !ok && pn.ext {
				return fail(where, line, nil, "an external checkpoint predates the first present record and cannot be checked")
			}
			if !ok {
				v.rep.CheckpointsPruned++
				continue
			}
			if !bytes.Equal(root, cp.Hash) {
				return fail(where, line, nil, "root at size %d does not match the signed checkpoint", cp.Size)
			}
			if ok, why := v.signedAt(cp.Size); !ok {
				return fail(where, line, nil, "checkpoint at size %d is signed by %s", cp.Size, why)
			}
			if pn.ext {
				v.rep.ExternalCheckpoints++
			} else {
				v.rep.Checkpoints++
			}
		default:
			m := v.roots
			if pn.ext {
				m = v.ext
			}
			if old, ok := m[cp.Size]; ok && !bytes.Equal(old, cp.Hash) {
				return fail(where, line, nil, "two signed checkpoints for size %d disagree (fork)", cp.Size)
			}
			m[cp.Size] = cp.Hash
		}
	}
	v.pend = rest
	return nil
}

// finishKeys closes the key history and refuses checkpoints no key the
// auditor trusts, or that the trail introduced, has signed.
func (v *verifier) finishKeys(lastSeq uint64) error {
	for _, pn := range v.pend {
		if pn.size < v.rep.FirstSeq || (pn.size == v.rep.FirstSeq && v.rep.FirstSeq > 0) {
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s line %d: checkpoint for size %d, before the first present record, is signed by a key not given (%s): not checked", CheckpointFile, pn.line, pn.size, strings.Join(noteSigners(string(pn.note)), ", ")))
			continue
		}
		where := CheckpointFile
		if pn.ext {
			where = "external checkpoint"
		}
		msg := fmt.Sprintf("checkpoint signature does not verify with the given key: signed by %s, which is neither a key given nor one a sealed rekey record introduced", strings.Join(noteSigners(string(pn.note)), ", "))
		v.rep.Signatures = "FAILED: " + msg
		return fail(where, pn.line, nil, "%s", msg)
	}
	key, trusted := v.cur, false
	if key == "" {
		if ids := v.sigs[v.rep.LatestCheckpoint]; len(ids) > 0 {
			key = ids[0]
		}
	}
	if k := v.keys[key]; k != nil {
		trusted = k.trusted
	}
	if key != "" || len(v.rep.Keys) > 0 {
		v.rep.Keys = append(v.rep.Keys, KeyEpoch{Key: key, VKey: v.curVKey, FirstSeq: v.epochStart, LastSeq: lastSeq, MACKeyID: v.macID, MAC: v.macState(), Trusted: trusted})
	}
	for i := range v.rep.Keys {
		if v.rep.Keys[i].LastSeq < v.rep.FirstSeq {
			v.rep.Keys[i].Pruned = true
		}
	}
	return nil
}

// --- MAC epochs ---

// pickMAC chooses, on the first record present, which given MAC key the
// trail's current epoch uses: the one its MAC verifies with. With none, the
// epoch's MACs are not checked, and the verdict waits for the rekey record
// that names the epoch's key (if that key was given, the MAC is invalid).
func (v *verifier) pickMAC(line []byte, p *parsed) {
	v.macPicked = true
	if v.c.macAlg != MACAlgHMACSHA256 || len(v.macKeys) == 0 {
		return
	}
	if p.mac != nil {
		for id, k := range v.macKeys {
			m := newMAC(k)
			if checkMAC(line, p, m) {
				v.c.setMAC(k)
				v.macID = id
				return
			}
		}
	}
	v.c.setMAC(nil)
	v.macID, v.macBad = "?", &macFirstBad{seg: v.curSeg, line: 1, seq: p.seq}
}

type macFirstBad struct {
	seg  string
	line int
	seq  uint64
}

func (v *verifier) macState() string {
	switch {
	case v.c == nil || v.c.macAlg != MACAlgHMACSHA256:
		return "none declared"
	case v.c.mac != nil:
		return "verified"
	default:
		return "NOT CHECKED (key not given)"
	}
}

func (v *verifier) rekeyMAC(seg string, line int, seq uint64, rb RekeyBody) error {
	if v.c.macAlg != MACAlgHMACSHA256 {
		if rb.OldMACKeyID != "" || rb.NewMACKeyID != "" {
			return fail(seg, line, seqp(seq), "rekey record names MAC keys but the trail declares none")
		}
		return nil
	}
	if rb.OldMACKeyID == "" || rb.NewMACKeyID == "" {
		return fail(seg, line, seqp(seq), "rekey record does not name the MAC keys (the trail declares hmac-sha256)")
	}
	switch {
	case v.macID == "?":
		if _, given := v.macKeys[rb.OldMACKeyID]; given {
			return fail(v.macBad.seg, v.macBad.line, seqp(v.macBad.seq), "MAC invalid")
		}
		v.macUnchecked = append(v.macUnchecked, fmt.Sprintf("seq %d..%d (MAC key %s not given)", v.epochStart, seq, rb.OldMACKeyID))
	case v.macID != "" && v.macID != rb.OldMACKeyID:
		return fail(seg, line, seqp(seq), "rekey record retires MAC key %s, but the records before it carry MACs under %s", rb.OldMACKeyID, v.macID)
	case v.macID == "" && len(v.macKeys) > 0:
		v.macUnchecked = append(v.macUnchecked, fmt.Sprintf("seq %d..%d (MAC key %s not given)", v.epochStart, seq, rb.OldMACKeyID))
	}
	if v.macID != "?" && v.macID != "" {
		v.macVerified = true
	}
	v.macBad = nil
	v.c.setMAC(v.macKeys[rb.NewMACKeyID]) // nil when not given
	v.macID = rb.NewMACKeyID
	if v.c.mac == nil && len(v.macKeys) == 0 {
		v.macID = ""
	}
	return nil
}

// finishMAC settles the MAC verdict once every record has been read.
func (v *verifier) finishMAC(lastSeq uint64) error {
	if v.c.macAlg != MACAlgHMACSHA256 || len(v.macKeys) == 0 {
		return nil
	}
	if v.macID != "?" && v.c.mac == nil && !v.macVerified {
		var given []string
		for id := range v.macKeys {
			given = append(given, id)
		}
		slices.Sort(given)
		return fail("", 0, nil, "the given MAC key(s) %s match none of the MAC keys the trail's rekey records name (last: %s)", strings.Join(given, ", "), v.macID)
	}
	switch {
	case v.macID == "?":
		return fail(v.macBad.seg, v.macBad.line, seqp(v.macBad.seq), "MAC invalid")
	case v.c.mac == nil:
		v.macUnchecked = append(v.macUnchecked, fmt.Sprintf("seq %d..%d (MAC key %s not given)", v.epochStart, lastSeq, v.macID))
	default:
		v.macVerified = true
	}
	if len(v.macUnchecked) > 0 {
		v.rep.MAC = "NOT CHECKED for " + strings.Join(v.macUnchecked, ", ")
		if v.macVerified {
			v.rep.MAC = "verified except " + strings.Join(v.macUnchecked, ", ")
		}
		v.rep.Warnings = append(v.rep.Warnings, "MACs "+v.rep.MAC)
	}
	return nil
}

// KeyringFile parses a keyring: one note verifier key per line; blank
// lines and lines starting with # are ignored.
func ParseKeyring(data []byte) ([]note.Verifier, error) {
	var out []note.Verifier
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := NewVerifier(line)
		if err != nil {
			return nil, fmt.Errorf("keyring line %d: %v", i+1, err)
		}
		if slices.ContainsFunc(out, func(o note.Verifier) bool { return vkeyID(o) == vkeyID(v) }) {
			continue
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("keyring holds no key")
	}
	return out, nil
}
