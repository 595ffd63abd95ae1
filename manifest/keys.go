package manifest

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/zeebo/blake3"
)

// KeyID names a public key: the first 8 bytes of BLAKE3 of the key.
type KeyID [8]byte

func (k KeyID) String() string { return hex.EncodeToString(k[:]) }

// KeyIDOf returns the ID of pub.
func KeyIDOf(pub ed25519.PublicKey) KeyID {
	s := blake3.Sum256(pub)
	var id KeyID
	copy(id[:], s[:8])
	return id
}

// PublicKey is a trusted publisher key.
type PublicKey struct {
	Key ed25519.PublicKey
	ID  KeyID
}

// PrivateKey signs manifests.
type PrivateKey struct {
	Key ed25519.PrivateKey
	ID  KeyID
}

// Public returns the public half.
func (k PrivateKey) Public() PublicKey {
	pub := k.Key.Public().(ed25519.PublicKey)
	return PublicKey{Key: pub, ID: k.ID}
}

const (
	pubTag  = "imgctl-ed25519-public"
	privTag = "imgctl-ed25519-private"
)

// GenerateKey makes a new key from rand (crypto/rand.Reader in production).
func GenerateKey(rand io.Reader) (PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand)
	if err != nil {
		return PrivateKey{}, err
	}
	return PrivateKey{Key: priv, ID: KeyIDOf(pub)}, nil
}

// MarshalText returns the public key file form.
func (k PublicKey) MarshalText() ([]byte, error) {
	return []byte(fmt.Sprintf("# imgctl public key %s\n%s %s\n", k.ID, pubTag, base64.StdEncoding.EncodeToString(k.Key))), nil
}

// MarshalText returns the private key file form (keep it secret, mode 0600).
func (k PrivateKey) MarshalText() ([]byte, error) {
	return []byte(fmt.Sprintf("# imgctl private key %s: keep secret\n%s %s\n", k.ID, privTag, base64.StdEncoding.EncodeToString(k.Key.Seed()))), nil
}

func keyLines(text []byte, tag string, fn func(raw []byte) error) error {
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || f[0] != tag {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(f[1])
		if err != nil {
			return fmt.Errorf("%s: %w", tag, err)
		}
		if err := fn(raw); err != nil {
			return err
		}
	}
	return sc.Err()
}

// ParsePrivateKey parses a private key file.
func ParsePrivateKey(text []byte) (PrivateKey, error) {
	var k PrivateKey
	err := keyLines(text, privTag, func(raw []byte) error {
		if len(raw) != ed25519.SeedSize {
			return fmt.Errorf("private key: %d bytes, want %d", len(raw), ed25519.SeedSize)
		}
		priv := ed25519.NewKeyFromSeed(raw)
		k = PrivateKey{Key: priv, ID: KeyIDOf(priv.Public().(ed25519.PublicKey))}
		return nil
	})
	if err == nil && k.Key == nil {
		err = errors.New("no " + privTag + " line")
	}
	return k, err
}

// LoadPrivateKey reads a private key file.
func LoadPrivateKey(path string) (PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return PrivateKey{}, err
	}
	k, err := ParsePrivateKey(b)
	if err != nil {
		return k, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Trust is the set of keys a terminal accepts and how many of them must
// sign. The zero Threshold means 1.
type Trust struct {
	Keys      map[KeyID]PublicKey
	Threshold int
}

// ParseTrust reads public key lines and an optional "threshold N" line.
// A trust file may list several keys; a .pub file is a trust file of one.
func (t *Trust) Parse(text []byte) error {
	if t.Keys == nil {
		t.Keys = map[KeyID]PublicKey{}
	}
	err := keyLines(text, pubTag, func(raw []byte) error {
		if len(raw) != ed25519.PublicKeySize {
			return fmt.Errorf("public key: %d bytes, want %d", len(raw), ed25519.PublicKeySize)
		}
		pub := ed25519.PublicKey(raw)
		t.Keys[KeyIDOf(pub)] = PublicKey{Key: pub, ID: KeyIDOf(pub)}
		return nil
	})
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(text), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "threshold" {
			n, err := strconv.Atoi(f[1])
			if err != nil || n < 1 {
				return fmt.Errorf("threshold %q: want a positive number", f[1])
			}
			t.Threshold = n
		}
	}
	return nil
}

// LoadTrust reads trust files (public keys, optional threshold).
func LoadTrust(paths ...string) (*Trust, error) {
	t := &Trust{Keys: map[KeyID]PublicKey{}}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		if err := t.Parse(b); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	if len(t.Keys) == 0 {
		return nil, errors.New("trust: no public keys given")
	}
	if t.Threshold > len(t.Keys) {
		return nil, fmt.Errorf("trust: threshold %d exceeds the %d keys", t.Threshold, len(t.Keys))
	}
	return t, nil
}
