package features

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// idField reads an identity field: a string field that must also pass
// checkID. An empty optional one is absent. An id str found printable only
// needs its length and ends checked.
func (d *Decoder) idField(name string, required bool) ([]byte, error) {
	if d.pos < len(d.buf) && d.buf[d.pos] != '"' {
		return nil, d.notString(name, required)
	}
	s, err := d.str()
	if err != nil {
		return nil, err
	}
	switch {
	case len(s) == 0:
		if required {
			return nil, idErr(name, "must not be empty")
		}
	case !d.printable || len(s) > MaxIDLen || s[0] == ' ' || s[len(s)-1] == ' ':
		if msg := checkID(s); msg != "" {
			return nil, idErr(name, msg)
		}
	}
	return s, nil
}

func idErr(field, msg string) error {
	return &FieldError{Field: field, Reason: ReasonBadID, Msg: msg}
}

// checkID returns why the non-empty id s is not acceptable (see Decode), or
// "" if it is. Printable ASCII, the common case, is checked eight bytes at a
// time and never allocates; a word with any other byte goes to checkIDSlow.
func checkID(s []byte) string {
	if len(s) > MaxIDLen {
		return "longer than " + strconv.Itoa(MaxIDLen) + " bytes"
	}
	if s[0] == ' ' || s[len(s)-1] == ' ' {
		return "starts or ends with white space"
	}
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := binary.LittleEndian.Uint64(s[i:])
		// A byte below 0x20 borrows in w-0x20…: its high bit is set there
		// but not in w. A byte of 0x7f carries into its high bit in w+1…;
		// one of 0x80 or more has it set in w (the carry out of 0xff only
		// reaches a byte above one already found). A borrow or carry can
		// only flag bytes above a bad one, so the word is exact.
		if ((w-0x20*ones)&^w|(w+ones)|w)&highs != 0 {
			return checkIDSlow(s, i)
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c-0x20 >= 0x7f-0x20 { // not ' '..'~'
			return checkIDSlow(s, i)
		}
	}
	return ""
}

// checkIDSlow checks s from s[i] on, s[:i] being printable ASCII.
func checkIDSlow(s []byte, i int) string {
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return fmt.Sprintf("control character %U at byte %d", c, i)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return fmt.Sprintf("invalid UTF-8 at byte %d", i)
		case r == utf8.RuneError:
			return fmt.Sprintf("replacement character %U at byte %d", r, i)
		case unicode.Is(unicode.Cc, r):
			return fmt.Sprintf("control character %U at byte %d", r, i)
		case unicode.Is(unicode.Cf, r):
			return fmt.Sprintf("format character %U at byte %d", r, i)
		case unicode.In(r, unicode.Zl, unicode.Zp):
			return fmt.Sprintf("line or paragraph separator %U at byte %d", r, i)
		case (i == 0 || i+size == len(s)) && unicode.IsSpace(r):
			return "starts or ends with white space"
		}
		i += size
	}
	return ""
}

// CheckID reports why id would be rejected in an event's identity field
// (bad_id), or nil: for ids from elsewhere (the inventory) that must be
// able to match events.
func CheckID(id string) error {
	if id == "" {
		return errors.New("empty id")
	}
	if why := checkID([]byte(id)); why != "" {
		return errors.New(why)
	}
	return nil
}
