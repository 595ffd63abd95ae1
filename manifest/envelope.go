package manifest

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// The signed file ("envelope"):
//
//	magic      "IMGCTLM" 0x01          8 bytes (the last byte is the envelope version)
//	length     uint32 big-endian       payload length
//	payload    canonical manifest      (Encode)
//	count      uint8                   number of signatures, 1..16
//	signatures count × (key id [8] ‖ ed25519 signature [64])
//
// Each signature covers sigContext ‖ payload. Nothing follows the last
// signature.
var magic = [8]byte{'I', 'M', 'G', 'C', 'T', 'L', 'M', 1}

const (
	sigContext = "imgctl manifest v1\x00"
	maxSigs    = 16
	sigLen     = 8 + ed25519.SignatureSize
)

// MaxEnvelope bounds a signed manifest file.
const MaxEnvelope = MaxPayload + 12 + maxSigs*sigLen

type signature struct {
	key KeyID
	sig []byte
}

// Sign encodes m and signs it with every key.
func Sign(m *Manifest, keys ...PrivateKey) ([]byte, error) {
	payload, err := Encode(m)
	if err != nil {
		return nil, err
	}
	return seal(magic, sigContext, payload, keys)
}

// seal frames payload as an envelope with the given magic, signed by every
// key over context ‖ payload. Different kinds of signed files use
// different magics and contexts, so a signature over one can never pass
// for another.
func seal(magic [8]byte, context string, payload []byte, keys []PrivateKey) ([]byte, error) {
	if len(keys) == 0 || len(keys) > maxSigs {
		return nil, fmt.Errorf("sign: need 1..%d keys, got %d", maxSigs, len(keys))
	}
	msg := append([]byte(context), payload...)
	out := make([]byte, 0, 13+len(payload)+len(keys)*sigLen)
	out = append(out, magic[:]...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(payload)))
	out = append(out, payload...)
	out = append(out, byte(len(keys)))
	for _, k := range keys {
		out = append(out, k.ID[:]...)
		out = append(out, ed25519.Sign(k.Key, msg)...)
	}
	return out, nil
}

// split parses the envelope frame without looking into the payload.
func split(env []byte) (payload []byte, sigs []signature, err error) {
	return splitAs(magic, env)
}

func splitAs(magic [8]byte, env []byte) (payload []byte, sigs []signature, err error) {
	if len(env) > MaxEnvelope {
		return nil, nil, &VerifyError{Err: ErrTooLarge, Detail: fmt.Sprintf("%d bytes", len(env))}
	}
	if len(env) < 13 || [8]byte(env[:8]) != magic {
		if len(env) >= 8 && string(env[:7]) == string(magic[:7]) {
			return nil, nil, &VerifyError{Err: ErrUnknownVersion, Detail: fmt.Sprintf("envelope version %d", env[7])}
		}
		return nil, nil, malformed("not an imgctl manifest")
	}
	n := binary.BigEndian.Uint32(env[8:12])
	if uint64(n) > uint64(len(env)-13) {
		return nil, nil, malformed("payload length %d exceeds file", n)
	}
	payload = env[12 : 12+n]
	rest := env[12+n:]
	count := int(rest[0])
	rest = rest[1:]
	if count < 1 || count > maxSigs || len(rest) != count*sigLen {
		return nil, nil, malformed("signature block: %d signatures in %d bytes", count, len(rest))
	}
	for i := 0; i < count; i++ {
		s := rest[i*sigLen : (i+1)*sigLen]
		sigs = append(sigs, signature{key: KeyID(s[:8]), sig: s[8:]})
	}
	return payload, sigs, nil
}

// Open decodes an envelope WITHOUT checking signatures: for showing and
// diffing files the caller already trusts. Use Verify for anything else.
func Open(env []byte) (*Manifest, error) {
	payload, _, err := split(env)
	if err != nil {
		return nil, err
	}
	return Decode(payload)
}

// ID returns the manifest's content ID: BLAKE3 of the payload.
func ID(env []byte) (chunkstore.ID, error) {
	payload, _, err := split(env)
	if err != nil {
		return chunkstore.ID{}, err
	}
	return chunkstore.Sum(payload), nil
}

// Signers returns the key IDs an envelope claims to be signed by.
func Signers(env []byte) ([]KeyID, error) {
	_, sigs, err := split(env)
	var ids []KeyID
	for _, s := range sigs {
		ids = append(ids, s.key)
	}
	return ids, err
}

// Policy is what a terminal requires of a manifest.
type Policy struct {
	Trust *Trust
	// Now is the clock; it must be set (the CLI passes its clock).
	Now func() time.Time
	// Name and Channel, when set, must match.
	Name, Channel string
	// MinRevision refuses lower revisions (rollback protection).
	MinRevision uint64
	// Kind, when set, must match.
	Kind Kind
}

// Verify checks an envelope against p: first the signatures over the exact
// payload bytes, and only then decodes it and checks version, expiry,
// name, channel and revision. Every refusal matches ErrVerification.
func Verify(env []byte, p Policy) (*Manifest, error) {
	if p.Trust == nil || len(p.Trust.Keys) == 0 {
		return nil, &VerifyError{Err: ErrUnknownKey, Detail: "no trusted keys"}
	}
	if p.Now == nil {
		return nil, fmt.Errorf("verify: no clock")
	}
	payload, err := checkSignatures(magic, sigContext, env, p.Trust)
	if err != nil {
		return nil, err
	}
	m, err := Decode(payload)
	if err != nil {
		return nil, err
	}
	if p.Kind != 0 && m.Kind != p.Kind {
		return nil, &VerifyError{Err: ErrWrongTarget, Detail: fmt.Sprintf("kind %s, want %s", m.Kind, p.Kind)}
	}
	if (p.Name != "" && m.Name != p.Name) || (p.Channel != "" && m.Channel != p.Channel) {
		return nil, &VerifyError{Err: ErrWrongTarget, Detail: fmt.Sprintf("got %s/%s, want %s/%s", m.Name, m.Channel, p.Name, p.Channel)}
	}
	if now := p.Now(); !m.Expires.IsZero() && !now.Before(m.Expires) {
		return nil, &VerifyError{Err: ErrExpired, Detail: fmt.Sprintf("%s@%d expired at %s", m.Name, m.Revision, m.Expires.Format(time.RFC3339))}
	}
	if m.Revision < p.MinRevision {
		return nil, &VerifyError{Err: ErrRollback, Detail: fmt.Sprintf("revision %d < %d", m.Revision, p.MinRevision)}
	}
	return m, nil
}

// checkSignatures returns the payload of an envelope of the given kind
// once enough trusted keys signed it.
func checkSignatures(magic [8]byte, context string, env []byte, trust *Trust) ([]byte, error) {
	payload, sigs, err := splitAs(magic, env)
	if err != nil {
		return nil, err
	}
	msg := append([]byte(context), payload...)
	good := map[KeyID]bool{}
	var ids []KeyID
	for _, s := range sigs {
		ids = append(ids, s.key)
		k, ok := trust.Keys[s.key]
		if !ok {
			continue
		}
		if !ed25519.Verify(k.Key, msg, s.sig) {
			return nil, &VerifyError{Err: ErrBadSignature, Detail: "signature by key " + s.key.String() + " does not match"}
		}
		good[s.key] = true
	}
	need := max(trust.Threshold, 1)
	if len(good) < need {
		return nil, &VerifyError{Err: ErrUnknownKey, Detail: fmt.Sprintf("%d of %d required trusted signatures (signed by %v)", len(good), need, ids)}
	}
	return payload, nil
}
