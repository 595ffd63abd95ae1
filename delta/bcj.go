package delta

// The x86 branch filter of pack format 3 (decisions/0006). Calls and jumps
// (E8/E9 followed by a 32-bit displacement) name their target relative to
// where they are; the same function called from many places gets as many
// different byte strings. Made absolute (displacement + position), they
// repeat and compress better: 1.4-1.6 % off the bench image's pack, whose
// new chunks are mostly ELF. A segment is filtered — its bytes and its
// reference alike, each from its own start — only when that makes it
// smaller.
//
// Only displacements whose top byte is 0x00 or 0xFF (±16 MiB: real ones)
// are converted, modulo 2^25 with that byte made the sign again, so a
// converted operand looks like a convertible one and decoding makes the
// same choices as encoding. An E8/E9 left alone blocks conversions in the
// four bytes after it (one there would change the byte its own choice
// looked at).

// Segment filters (format 3).
const (
	filterNone = 0
	filterX86  = 1
)

// bcjX86 converts b in place: to absolute displacements (encode) or back.
func bcjX86(b []byte, encode bool) {
	block := 0 // no conversion starts before this
	for i := 0; i+5 <= len(b); {
		if b[i] != 0xe8 && b[i] != 0xe9 {
			i++
			continue
		}
		top := b[i+4]
		if (top != 0 && top != 0xff) || i < block {
			if i >= block {
				block = i + 5
			}
			i++
			continue
		}
		v := uint32(b[i+1]) | uint32(b[i+2])<<8 | uint32(b[i+3])<<16 | uint32(top)<<24
		if p := uint32(i + 5); encode {
			v += p
		} else {
			v -= p
		}
		b[i+1], b[i+2], b[i+3] = byte(v), byte(v>>8), byte(v>>16)
		b[i+4] = 0
		if v&(1<<24) != 0 {
			b[i+4] = 0xff
		}
		i += 5
	}
}
