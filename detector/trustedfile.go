package detector

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// trustedFile is a file vigil trusts (the emitters' keyring, the agent
// inventory), parsed into a T and replaced whole when the file changes
// (reload). A file that others may write is refused: whoever can write it
// decides what vigil trusts. Safe for concurrent use by readers (load).
type trustedFile[T any] struct {
	what  string // the configuration field, for errors
	path  string
	parse func([]byte) (*T, error)
	cur   atomic.Pointer[T]
	mod   time.Time // of the version in use
	size  int64
}

// reload rereads the file if it changed since the last read, and reports
// whether it did. On an error the version in use stays.
func (f *trustedFile[T]) reload() (bool, error) {
	st, err := os.Stat(f.path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", f.what, err)
	}
	if f.cur.Load() != nil && st.ModTime().Equal(f.mod) && st.Size() == f.size {
		return false, nil
	}
	if st.Mode().Perm()&0o022 != 0 {
		return false, fmt.Errorf("%s: %s is writable by others (mode %v): whoever can write it decides what vigil trusts (chmod go-w)", f.what, f.path, st.Mode().Perm())
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", f.what, err)
	}
	v, err := f.parse(data)
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", f.what, f.path, err)
	}
	f.cur.Store(v)
	f.mod, f.size = st.ModTime(), st.Size()
	return true, nil
}

// load returns the version in use.
func (f *trustedFile[T]) load() *T { return f.cur.Load() }
