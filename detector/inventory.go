package detector

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// The agent inventory (issue 12 item 2): which identities exist, their
// peer group, owner and criticality, and whether vigil may act on them.
// "Unknown agents create security blind spots": with an inventory, an
// identity absent from it raises unknown_agent (through the identity
// limiter: a flood is one identity_flood alert an hour), and one that
// looks like a known id (a homoglyph, a digit for a letter, an extra
// suffix) says which. The inventory's class wins over the event's claimed
// one; a claim that disagrees is an identity alert. Agents in mode observe
// are alerted on, never revoked.

// Inventory modes.
const (
	InventoryObserve = "observe"
	InventoryEnforce = "enforce"
)

// Alert kinds about the inventory.
const (
	KindUnknownAgent = "unknown_agent"
)

// InventoryEntry is one agent of the inventory.
type InventoryEntry struct {
	ID          string `json:"id"`
	Class       string `json:"class"`
	Owner       string `json:"owner,omitempty"`
	Criticality string `json:"criticality,omitempty"`
	Mode        string `json:"mode,omitempty"` // observe or enforce (default enforce)
}

// inventory is one parsed inventory file.
type inventory struct {
	agents map[string]*InventoryEntry
	// skeletons maps the confusable skeleton of every id to the id.
	skeletons map[string]string
}

// ParseInventory decodes an inventory file: {"agents": [InventoryEntry, …]}.
func ParseInventory(data []byte) (*inventory, error) {
	var f struct {
		Agents []*InventoryEntry `json:"agents"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("inventory: data after the JSON object at byte %d", dec.InputOffset())
	}
	inv := &inventory{agents: make(map[string]*InventoryEntry, len(f.Agents)), skeletons: make(map[string]string, len(f.Agents))}
	for i, e := range f.Agents {
		switch {
		case e == nil || e.ID == "":
			return nil, fmt.Errorf("inventory: agent %d: id is required", i)
		case features.CheckID(e.ID) != nil:
			return nil, fmt.Errorf("inventory: agent %q: %v", e.ID, features.CheckID(e.ID))
		case e.Class == "":
			return nil, fmt.Errorf("inventory: agent %q: class is required", e.ID)
		case features.CheckID(e.Class) != nil:
			return nil, fmt.Errorf("inventory: agent %q: class %q: %v", e.ID, e.Class, features.CheckID(e.Class))
		case e.Mode == "":
			e.Mode = InventoryEnforce
		case e.Mode != InventoryObserve && e.Mode != InventoryEnforce:
			return nil, fmt.Errorf("inventory: agent %q: mode %q: want observe or enforce", e.ID, e.Mode)
		}
		if inv.agents[e.ID] != nil {
			return nil, fmt.Errorf("inventory: agent %q listed twice", e.ID)
		}
		inv.agents[e.ID] = e
		inv.skeletons[skeleton(e.ID)] = e.ID
	}
	return inv, nil
}

// lookalike returns the known id that id imitates — the same skeleton
// (homoglyphs, digits for letters, case), or a known id followed by an
// extra suffix — or "".
func (inv *inventory) lookalike(id string) string {
	if known, ok := inv.skeletons[skeleton(id)]; ok && known != id {
		return known
	}
	for i := len(id) - 1; i > 0; i-- {
		switch id[i] {
		case '-', '_', '.', '/', '@', ':':
			if _, ok := inv.agents[id[:i]]; ok {
				return id[:i]
			}
		}
	}
	return ""
}

// confusables maps characters that read like others to them: common
// Cyrillic and Greek homoglyphs of Latin letters, and digits that pass for
// letters. (A small table of the usual suspects, not Unicode's whole
// confusables list.)
var confusables = map[rune]rune{
	'а': 'a', 'е': 'e', 'о': 'o', 'р': 'p', 'с': 'c', 'у': 'y', 'х': 'x', 'і': 'i', 'ј': 'j', 'ѕ': 's', 'һ': 'h', 'ԁ': 'd', 'ԛ': 'q', 'ԝ': 'w',
	'А': 'a', 'В': 'b', 'Е': 'e', 'К': 'k', 'М': 'm', 'Н': 'h', 'О': 'o', 'Р': 'p', 'С': 'c', 'Т': 't', 'Х': 'x', 'І': 'i',
	'α': 'a', 'ο': 'o', 'ρ': 'p', 'ν': 'v', 'κ': 'k', 'ι': 'i', 'τ': 't', 'υ': 'u', 'Ο': 'o', 'Α': 'a', 'Β': 'b', 'Ε': 'e', 'Κ': 'k', 'Μ': 'm', 'Ν': 'n', 'Ρ': 'p', 'Τ': 't',
	'0': 'o', '1': 'l', '3': 'e', '5': 's', '7': 't', '$': 's', '|': 'l', 'ı': 'i', 'ℓ': 'l',
}

// skeleton folds id to a form two lookalike ids share: confusables to
// their Latin letter, then case; "rn" reads as "m", "vv" as "w".
func skeleton(id string) string {
	var b strings.Builder
	b.Grow(len(id))
	for _, r := range id {
		if r == utf8.RuneError {
			continue
		}
		if c, ok := confusables[r]; ok {
			r = c
		}
		if r == 'I' || r == 'i' {
			r = 'l' // I and l read alike
		}
		b.WriteRune(toLower(r))
	}
	s := strings.ReplaceAll(b.String(), "rn", "m")
	return strings.ReplaceAll(s, "vv", "w")
}

func toLower(r rune) rune {
	if 'A' <= r && r <= 'Z' {
		return r + 'a' - 'A'
	}
	return r
}

// Inventory is the agent inventory, shared by every partition and
// replaced whole when its file changes (Reload). Safe for concurrent use.
type Inventory struct{ f trustedFile[inventory] }

// LoadInventory reads the inventory file.
func LoadInventory(path string) (*Inventory, error) {
	k := &Inventory{f: trustedFile[inventory]{what: "inventory", path: path, parse: ParseInventory}}
	if _, err := k.Reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload rereads the inventory file if it changed, and reports whether it
// did. On an error the inventory in use stays.
func (k *Inventory) Reload() (bool, error) { return k.f.reload() }

// Len is the number of agents in the inventory.
func (k *Inventory) Len() int { return len(k.f.load().agents) }

// SetInventory gives the pipeline the agent inventory (nil: none). Call
// before the first Process.
func (p *Pipeline) SetInventory(inv *Inventory) { p.inv = inv }

// inventoryClass returns the inventory's class for agent id, if it lists it.
func (p *Pipeline) inventoryClass(id []byte) (string, bool) {
	if p.inv == nil {
		return "", false
	}
	e, ok := p.inv.f.load().agents[string(id)]
	if !ok {
		return "", false
	}
	return e.Class, true
}

// observeOnly reports whether the inventory says vigil may not act on agent id.
func (p *Pipeline) observeOnly(id string) bool {
	if p.inv == nil {
		return false
	}
	e, ok := p.inv.f.load().agents[id]
	return ok && e.Mode == InventoryObserve
}

// unknownAgent raises unknown_agent for a new identity the inventory does
// not list, naming the known id it looks like, if any.
func (p *Pipeline) unknownAgent(a *agent, e *features.Event) {
	reasons := []models.Reason{{Feature: "not_in_inventory", Value: 1}}
	sev := SeverityWarning
	if like := p.inv.f.load().lookalike(a.id); like != "" {
		reasons = append(reasons, models.Reason{Feature: "lookalike_of:" + like, Value: 1})
		sev = SeverityCritical
	}
	p.identityEvent(a.id, a.class.name, e, KindUnknownAgent, KindUnknownAgent, sev, reasons, "none")
}

// checkClaim raises an identity alert when an event claims another peer
// group than the inventory's for its listed agent, at most once per agent
// and window.
func (p *Pipeline) checkClaim(a *agent, e *features.Event, idx int64) {
	if _, listed := p.inventoryClass(e.AgentID); !listed {
		return // an unknown agent's claim is its class
	}
	if p.claims == nil || len(p.claims) >= 10000 {
		p.claims = make(map[string]int64)
	}
	if last, ok := p.claims[a.id]; ok && last >= idx {
		return
	}
	p.claims[a.id] = idx
	p.identityEvent(a.id, a.class.name, e, KindIdentity, KindIdentity+"/class", SeverityWarning,
		[]models.Reason{{Feature: "claimed_class:" + string(e.AgentClass), Value: 1}}, "inventory")
}
