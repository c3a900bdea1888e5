package forensic

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kvhygiene/kvh/internal/atomicfile"
	"golang.org/x/mod/sumdb/note"
)

// File names written by GenerateKeys.
const (
	SigningKeyFile      = "kvh.key"
	VerificationKeyFile = "kvh.pub"
	// MACKeyFile is written by GenerateMACKey.
	MACKeyFile = "kvh.hmac"
)

// EnvHMACSecret is the seed's variable for the HMAC secret, kept for compatibility.
const EnvHMACSecret = "FORENSIC_HMAC_SECRET"

// GenerateKeys writes a new Ed25519 signing key (mode 0600) and its note
// verification key into dir. It refuses to overwrite either file.
func GenerateKeys(dir, name string) (skeyPath, vkeyPath string, err error) {
	if name == "" {
		return "", "", errors.New("key name is empty")
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		return "", "", fmt.Errorf("generating key %q: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	skeyPath = filepath.Join(dir, SigningKeyFile)
	vkeyPath = filepath.Join(dir, VerificationKeyFile)
	for _, p := range []string{skeyPath, vkeyPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("%s already exists; refusing to overwrite a key", p)
		}
	}
	if err := atomicfile.WriteNew(skeyPath, []byte(skey+"\n"), 0o600); err != nil {
		return "", "", err
	}
	if err := atomicfile.WriteNew(vkeyPath, []byte(vkey+"\n"), 0o644); err != nil {
		os.Remove(skeyPath)
		return "", "", err
	}
	return skeyPath, vkeyPath, nil
}

// GenerateMACKey writes a new random HMAC key (32 bytes, as 64 hex digits
// and a newline, mode 0600) into dir and returns its path. It refuses to
// overwrite one.
func GenerateMACKey(dir string) (string, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	p := filepath.Join(dir, MACKeyFile)
	if _, err := os.Lstat(p); err == nil {
		return "", fmt.Errorf("%s already exists; refusing to overwrite a key", p)
	}
	if err := atomicfile.WriteNew(p, []byte(hex.EncodeToString(k[:])+"\n"), 0o600); err != nil {
		return "", err
	}
	return p, nil
}

// LoadSigner reads a note signing key file. The file must not be readable by
// group or others.
func LoadSigner(path string) (note.Signer, error) {
	b, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	s, err := NewSigner(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return s, nil
}

// LoadVerifier reads a note verification key (vkey) file.
func LoadVerifier(path string) (note.Verifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v, err := NewVerifier(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("verification key %s: %w", path, err)
	}
	return v, nil
}

// LoadMACKey reads an HMAC key file (raw bytes; one trailing newline is
// dropped), or, when path is empty, the seed's FORENSIC_HMAC_SECRET variable.
// It returns nil when neither is set.
func LoadMACKey(path string) ([]byte, error) {
	if path == "" {
		if s := os.Getenv(EnvHMACSecret); s != "" {
			return []byte(s), nil
		}
		return nil, nil
	}
	b, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	b = []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
	if len(b) == 0 {
		return nil, fmt.Errorf("hmac key file %s is empty", path)
	}
	return b, nil
}

func readSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is mode %04o; secret files must be 0600 or stricter", path, st.Mode().Perm())
	}
	return os.ReadFile(path)
}

// KeyID is a short fingerprint of a MAC key for records and logs (never the key).
func KeyID(key []byte) string {
	s := sha256.Sum256(append([]byte("kvh-mac-key-id\n"), key...))
	return hex.EncodeToString(s[:4])
}
