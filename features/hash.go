package features

import (
	"encoding/binary"
	"math/bits"
)

// Hash64 is a fast, deterministic 64-bit hash of b (stable across processes
// and versions, so hashes can be persisted in snapshots). It mixes eight bytes
// at a time with 128-bit multiplies; it is not cryptographic.
func Hash64(b []byte, seed uint64) uint64 {
	const (
		k0 = 0xa0761d6478bd642f
		k1 = 0xe7037ed1a0b428db
		k2 = 0x8ebc6af09c88c6e3
	)
	h := seed ^ k0 ^ uint64(len(b))*k2
	for len(b) >= 8 {
		h = mix(h^binary.LittleEndian.Uint64(b), k1)
		b = b[8:]
	}
	if len(b) > 0 {
		var t uint64
		for i, c := range b {
			t |= uint64(c) << (8 * i)
		}
		h = mix(h^t, k2)
	}
	return mix(h, k0)
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a^0x2d358dccaa6c78a5, b^0x8bb84b93962eacc9)
	return hi ^ lo
}
