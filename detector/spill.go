package detector

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// AgentStore holds the snapshots of agents evicted from a Pipeline's
// memory (see Pipeline.Evict). The Pipeline reloads an agent from it when
// the agent's next event arrives, and reads it for full checkpoints.
type AgentStore interface {
	// Put stores snapshot under id (replacing any). The store copies it.
	Put(id string, snapshot []byte) error
	// Append appends id's snapshot to dst; ok is false if it holds none.
	Append(dst []byte, id string) (_ []byte, ok bool, err error)
	// Delete forgets id.
	Delete(id string)
	// Len is the number of snapshots held.
	Len() int
	// IDs appends the ids held.
	IDs(dst []string) []string
}

// SpillFile is an AgentStore in an unlinked temporary file: snapshots are
// appended to it and indexed in memory (the id and 12 bytes per agent), and
// the file is rewritten when more than half of it is dead. It is removed
// from the directory as soon as it is created, so it disappears with the
// process, crash included; the state topic, not this file, is what
// survives. Not safe for concurrent use (one per partition).
type SpillFile struct {
	dir        string
	f          *os.File
	index      map[string]spillRef
	size, live int64
	buf        []byte
}

type spillRef struct {
	off int64
	n   uint32
}

// NewSpillFile creates a SpillFile in dir ("" : the system's temporary
// directory).
func NewSpillFile(dir string) (*SpillFile, error) {
	f, err := os.CreateTemp(dir, "vigil-agents-*.spill")
	if err != nil {
		return nil, fmt.Errorf("agent spill file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("agent spill file: %w", err)
	}
	return &SpillFile{dir: dir, f: f, index: make(map[string]spillRef)}, nil
}

// Put implements AgentStore.
func (s *SpillFile) Put(id string, snapshot []byte) error {
	if len(snapshot) > 1<<31 {
		return errors.New("agent spill file: snapshot too large")
	}
	if _, err := s.f.WriteAt(snapshot, s.size); err != nil {
		return fmt.Errorf("agent spill file: %w", err)
	}
	s.Delete(id)
	s.index[id] = spillRef{off: s.size, n: uint32(len(snapshot))}
	s.size += int64(len(snapshot))
	s.live += int64(len(snapshot))
	return nil
}

// Append implements AgentStore.
func (s *SpillFile) Append(dst []byte, id string) ([]byte, bool, error) {
	r, ok := s.index[id]
	if !ok {
		return dst, false, nil
	}
	n := len(dst)
	dst = append(dst, make([]byte, r.n)...)
	if _, err := s.f.ReadAt(dst[n:], r.off); err != nil {
		return dst[:n], false, fmt.Errorf("agent spill file: %w", err)
	}
	return dst, true, nil
}

// Delete implements AgentStore.
func (s *SpillFile) Delete(id string) {
	r, ok := s.index[id]
	if !ok {
		return
	}
	delete(s.index, id)
	s.live -= int64(r.n)
	if s.size > 1<<20 && s.live < s.size/2 {
		if err := s.compact(); err != nil {
			// The old file stays valid: only space is lost.
			return
		}
	}
}

// compact rewrites the live snapshots to a new file.
func (s *SpillFile) compact() error {
	nf, err := NewSpillFile(s.dir)
	if err != nil {
		return err
	}
	for id, r := range s.index {
		s.buf = append(s.buf[:0], make([]byte, r.n)...)
		if _, err := s.f.ReadAt(s.buf, r.off); err != nil && !errors.Is(err, io.EOF) {
			nf.Close()
			return err
		}
		if err := nf.Put(id, s.buf); err != nil {
			nf.Close()
			return err
		}
	}
	s.f.Close()
	s.f, s.index, s.size, s.live = nf.f, nf.index, nf.size, nf.live
	return nil
}

// Len implements AgentStore.
func (s *SpillFile) Len() int { return len(s.index) }

// IDs implements AgentStore.
func (s *SpillFile) IDs(dst []string) []string {
	for id := range s.index {
		dst = append(dst, id)
	}
	return dst
}

// Close removes the file.
func (s *SpillFile) Close() error { return s.f.Close() }
