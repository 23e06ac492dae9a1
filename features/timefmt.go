package features

import (
	"math"
	"time"
)

// Bounds for a plausible event time: years 2000 to 2199.
var (
	minTS = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	maxTS = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano() - 1
)

// ParseRFC3339 parses an RFC 3339 timestamp ("2026-03-02T09:15:03.123Z",
// "2026-03-02T10:15:03+01:00") into Unix nanoseconds without allocating.
// Fractions beyond nanoseconds are truncated. It reports false for anything
// that is not a valid RFC 3339 date-time, and for instants that int64
// nanoseconds cannot hold (before 1678 or after 2261).
func ParseRFC3339(b []byte) (int64, bool) {
	ts, year, ok := parseRFC3339(b)
	if !ok || year == 0 {
		return 0, false
	}
	return ts, true
}

// parseRFC3339 also returns the year, or year 0 (with ok true) for a valid
// timestamp that int64 nanoseconds cannot hold.
func parseRFC3339(b []byte) (ts int64, year int, ok bool) {
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != 't') || b[13] != ':' || b[16] != ':' {
		return 0, 0, false
	}
	year, ok1 := digits(b[0:4])
	month, ok2 := digits(b[5:7])
	day, ok3 := digits(b[8:10])
	hour, ok4 := digits(b[11:13])
	minute, ok5 := digits(b[14:16])
	sec, ok6 := digits(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return 0, 0, false
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59 || sec > 60 {
		return 0, 0, false
	}
	if sec == 60 { // leap second: fold into the second before
		sec = 59
	}
	i := 19
	var nanos int64
	if b[i] == '.' {
		i++
		start := i
		scale := int64(100000000)
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			nanos += int64(b[i]-'0') * scale
			scale /= 10
			i++
		}
		if i == start {
			return 0, 0, false
		}
	}
	if i >= len(b) {
		return 0, 0, false
	}
	var offset int64
	switch b[i] {
	case 'Z', 'z':
		i++
	case '+', '-':
		if i+6 != len(b) || b[i+3] != ':' {
			return 0, 0, false
		}
		oh, ok1 := digits(b[i+1 : i+3])
		om, ok2 := digits(b[i+4 : i+6])
		if !ok1 || !ok2 || oh > 23 || om > 59 {
			return 0, 0, false
		}
		offset = int64(oh*3600 + om*60)
		if b[i] == '-' {
			offset = -offset
		}
		i += 6
	default:
		return 0, 0, false
	}
	if i != len(b) {
		return 0, 0, false
	}
	if year < 1677 || year > 2262 { // far outside int64 nanoseconds
		return 0, 0, true
	}
	days := daysFromCivil(year, month, day)
	secs := days*86400 + int64(hour*3600+minute*60+sec) - offset
	ns, fits := toNanos(secs, nanos)
	if !fits {
		return 0, 0, true
	}
	return ns, year, true
}

// toNanos is secs·10⁹ + nanos (0 ≤ nanos < 10⁹) unless it overflows int64.
func toNanos(secs, nanos int64) (int64, bool) {
	const maxS, minS = math.MaxInt64 / int64(1e9), math.MinInt64 / int64(1e9)
	if secs >= 0 {
		if secs > maxS || secs*1e9 > math.MaxInt64-nanos {
			return 0, false
		}
		return secs*1e9 + nanos, true
	}
	// Negative: (secs+1)·10⁹ is representable; then add nanos − 10⁹ < 0.
	s1 := secs + 1
	if s1 < minS || s1*1e9 < math.MinInt64-(nanos-1e9) {
		return 0, false
	}
	return s1*1e9 + (nanos - 1e9), true
}

func digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil returns days since 1970-01-01 for a proleptic Gregorian date
// (the well-known era-based algorithm).
func daysFromCivil(y, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 {
		era = (y - 399) / 400
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return int64(era*146097 + doe - 719468)
}
