package models

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ErrSnapshot is wrapped by errors from UnmarshalBinary: the bytes are not a
// Baseline snapshot this version can read.
var ErrSnapshot = errors.New("bad baseline snapshot")

// Snapshot format: 'B', a format version byte, the payload length as a
// uvarint, then every field little-endian in the order of Baseline.fields.
// Fields are only ever appended: a reader fills fields missing from an older,
// shorter payload with zeros and ignores fields a newer writer appended, so
// state written by any version loads in any other.
const (
	snapshotMagic   = 'B'
	snapshotVersion = 1
)

// MarshalBinary encodes b (about 1.3 KB).
func (b *Baseline) MarshalBinary() ([]byte, error) {
	return b.AppendBinary(nil)
}

// AppendBinary appends b's encoding to dst.
func (b *Baseline) AppendBinary(dst []byte) ([]byte, error) {
	var e encoder
	b.fields(&e)
	dst = append(dst, snapshotMagic, snapshotVersion)
	dst = binary.AppendUvarint(dst, uint64(len(e.buf)))
	return append(dst, e.buf...), nil
}

// UnmarshalBinary decodes a snapshot written by MarshalBinary of this or any
// other version. The input must hold exactly one snapshot.
func (b *Baseline) UnmarshalBinary(data []byte) error {
	n, err := b.decodeFrom(data)
	if err != nil {
		return err
	}
	if n != len(data) {
		return fmt.Errorf("%w: %d trailing bytes", ErrSnapshot, len(data)-n)
	}
	return nil
}

// DecodeFrom decodes one snapshot at the start of data and returns its length.
func (b *Baseline) DecodeFrom(data []byte) (int, error) { return b.decodeFrom(data) }

func (b *Baseline) decodeFrom(data []byte) (int, error) {
	if len(data) < 3 || data[0] != snapshotMagic {
		return 0, fmt.Errorf("%w: no header", ErrSnapshot)
	}
	if data[1] == 0 {
		return 0, fmt.Errorf("%w: version 0", ErrSnapshot)
	}
	size, k := binary.Uvarint(data[2:])
	if k <= 0 || size > uint64(len(data)-2-k) {
		return 0, fmt.Errorf("%w: truncated", ErrSnapshot)
	}
	start := 2 + k
	*b = Baseline{}
	d := decoder{buf: data[start : start+int(size)]}
	b.fields(&d)
	if int(b.hodHour) >= len(b.hodBias) {
		b.hodHour = 0 // an index: out of range, it would panic when learned
	}
	return start + int(size), nil
}

// fields visits every persistent field in a fixed order. Append new fields
// at the end only.
func (b *Baseline) fields(c codec) {
	c.u32(&b.Windows)
	c.i64(&b.LastIndex)
	for i := range b.gauss {
		g := &b.gauss[i]
		c.f32(&g.mean)
		c.f32(&g.vr)
		c.f32(&g.slowMean)
		c.f32(&g.slowVr)
		c.u32(&g.n)
	}
	for i := range legacyRare {
		c.f32(&b.rare[i].q)
		c.f32(&b.rare[i].size)
	}
	for i := range legacyShare {
		c.f32(&b.share[i].k)
		c.f32(&b.share[i].n)
	}
	for i := range b.slots {
		c.f32(&b.slots[i].mean)
	}
	for i := range b.slotN {
		c.u8(&b.slotN[i])
	}
	c.f32(&b.dispNum)
	c.f32(&b.dispDen)
	for i := range b.ratio {
		for j := range b.ratio[i] {
			c.f32(&b.ratio[i][j])
		}
	}
	for i := range b.tail {
		c.f32(&b.tail[i][0])
		c.f32(&b.tail[i][1])
	}
	for i := range b.mix {
		c.f32(&b.mix[i])
	}
	c.f32(&b.mixN)
	for i := range legacySustained {
		c.f32(&b.cusum[i])
	}
	c.f32(&b.cusumJoint)
	c.i64(&b.cusumIdx)
	c.i64(&b.hourIdx)
	c.f32(&b.hourX)
	c.f32(&b.hourM)
	for i := range legacyHourNovelty {
		c.f32(&b.hourNew[i])
		c.f32(&b.hourNewExp[i])
	}
	c.f32(&b.hourNum)
	c.f32(&b.hourDen)
	c.u16(&b.hourN)
	c.f32(&b.quietNum)
	c.f32(&b.quietDen)
	// Appended with denied_unfamiliar: its rare model, CUSUM and hour sum.
	for i := legacyRare; i < numRare; i++ {
		c.f32(&b.rare[i].q)
		c.f32(&b.rare[i].size)
	}
	for i := legacySustained; i < legacySustainedV2; i++ {
		c.f32(&b.cusum[i])
	}
	for i := legacyHourNovelty; i < len(b.hourNew); i++ {
		c.f32(&b.hourNew[i])
		c.f32(&b.hourNewExp[i])
	}
	for i := range legacyHourShares {
		c.f32(&b.hourShareK[i])
		c.f32(&b.hourShareN[i])
		c.f32(&b.hourShareExp[i])
	}
	c.f32(&b.maxCount)
	c.f32(&b.maxN)
	c.f32(&b.cusumCount)
	c.i64(&b.dayIdx)
	c.f32(&b.dayX)
	c.f32(&b.dayMean[0])
	c.f32(&b.dayMean[1])
	c.f32(&b.dayNum)
	c.f32(&b.dayDen)
	c.u8(&b.dayN[0])
	c.u8(&b.dayN[1])
	var flag uint8
	if b.dayVolumeAlerted {
		flag = 1
	}
	c.u8(&flag)
	b.dayVolumeAlerted = flag == 1
	c.f32(&b.hourFirst)
	c.f32(&b.hourBytes)
	c.f32(&b.hourBytesN)
	g := &b.hourBytesOut
	c.f32(&g.mean)
	c.f32(&g.vr)
	c.f32(&g.slowMean)
	c.f32(&g.slowVr)
	c.u32(&g.n)
	c.f32(&b.dayCusum)
	c.f32(&b.alertHours)
	c.i64(&b.runIdx)
	c.i64(&b.alertHour)
	c.f32(&b.accept)
	for i := range legacyShare {
		c.f32(&b.share[i].slowK)
		c.f32(&b.share[i].slowN)
	}
	for i := range b.rare {
		c.f32(&b.rare[i].slowQ)
	}
	for i := range b.recentNew {
		c.f32(&b.recentNew[i])
		c.f32(&b.recentExp[i])
	}
	c.i64(&b.fleetUntil)
	c.i64(&b.firstIdx) // 0 in older snapshots: their history counts as long
	c.f32(&b.onsets[0])
	c.f32(&b.onsets[1])
	c.i64(&b.onsetIdx)
	c.i64(&b.novelIdx)
	for h := range b.hodBias {
		for j := range b.hodBias[h] {
			c.u8(&b.hodBias[h][j])
		}
	}
	for j := range b.hodZ {
		c.f32(&b.hodZ[j])
		c.u8(&b.hodN[j])
		c.f32(&b.hodDay[j][0])
		c.f32(&b.hodDay[j][1])
	}
	c.u8(&b.hodHour)
	// Appended with new_origin_share: its share, CUSUM and hour sums.
	for i := legacyShare; i < numShare; i++ {
		sh := &b.share[i]
		c.f32(&sh.k)
		c.f32(&sh.n)
		c.f32(&sh.slowK)
		c.f32(&sh.slowN)
	}
	for i := legacySustainedV2; i < len(b.cusum); i++ {
		c.f32(&b.cusum[i])
	}
	for i := legacyHourShares; i < len(b.hourShareK); i++ {
		c.f32(&b.hourShareK[i])
		c.f32(&b.hourShareN[i])
		c.f32(&b.hourShareExp[i])
	}
}

// The lengths of the arrays that snapshots held before denied_unfamiliar
// was added; the items added since are appended at the end (see fields).
const (
	legacyRare        = 5
	legacySustained   = 11
	legacyHourNovelty = 3
	// And before new_origin_share.
	legacyShare       = 5
	legacySustainedV2 = 12
	legacyHourShares  = 3
)

type codec interface {
	u8(*uint8)
	u16(*uint16)
	u32(*uint32)
	i64(*int64)
	f32(*float32)
}

type encoder struct{ buf []byte }

func (e *encoder) u8(v *uint8)   { e.buf = append(e.buf, *v) }
func (e *encoder) u16(v *uint16) { e.buf = binary.LittleEndian.AppendUint16(e.buf, *v) }
func (e *encoder) u32(v *uint32) { e.buf = binary.LittleEndian.AppendUint32(e.buf, *v) }
func (e *encoder) i64(v *int64)  { e.buf = binary.LittleEndian.AppendUint64(e.buf, uint64(*v)) }
func (e *encoder) f32(v *float32) {
	e.buf = binary.LittleEndian.AppendUint32(e.buf, math.Float32bits(*v))
}

// decoder reads fields in order; once the payload runs out (an older, shorter
// snapshot) the remaining fields stay zero.
type decoder struct {
	buf []byte
	off int
}

func (d *decoder) take(n int) []byte {
	if d.off+n > len(d.buf) {
		d.off = len(d.buf)
		return nil
	}
	b := d.buf[d.off : d.off+n]
	d.off += n
	return b
}

func (d *decoder) u8(v *uint8) {
	if b := d.take(1); b != nil {
		*v = b[0]
	}
}

func (d *decoder) u16(v *uint16) {
	if b := d.take(2); b != nil {
		*v = binary.LittleEndian.Uint16(b)
	}
}

func (d *decoder) u32(v *uint32) {
	if b := d.take(4); b != nil {
		*v = binary.LittleEndian.Uint32(b)
	}
}

func (d *decoder) i64(v *int64) {
	if b := d.take(8); b != nil {
		*v = int64(binary.LittleEndian.Uint64(b))
	}
}

func (d *decoder) f32(v *float32) {
	if b := d.take(4); b != nil {
		f := math.Float32frombits(binary.LittleEndian.Uint32(b))
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			f = 0 // never let a corrupt snapshot poison scoring
		}
		*v = f
	}
}
