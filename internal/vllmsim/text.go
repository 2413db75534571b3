package vllmsim

import (
	"encoding/json"
	"hash/fnv"
	"strings"
	"sync"
)

// The simulated tokenizer: one token per whitespace-separated word, plus the
// chat template's special tokens (Qwen's ChatML).
const (
	tokImStart = 151644
	tokImEnd   = 151645
	tokNewline = 198
	vocabSize  = 151643
)

var vocab = strings.Fields(`the a of to and in is that for it on with as this be are by
from at or an model data request token agent plan code test build step user story value
system memory cache queue server stream check result change review design module function
error retry budget engine layer batch context prompt answer define keep small clear write
read order next then first each will can should must may also more only when while after`)

// tokenizer maps words to stable ids and back, remembering the words it has
// seen so that /detokenize returns them.
type tokenizer struct {
	mu    sync.Mutex
	words map[int]string
}

func newTokenizer() *tokenizer {
	t := &tokenizer{words: map[int]string{tokImStart: "<|im_start|>", tokImEnd: "<|im_end|>", tokNewline: "\n"}}
	for _, w := range vocab {
		t.id(w)
	}
	return t
}

func (t *tokenizer) id(word string) int {
	switch word {
	case "<|im_start|>":
		return tokImStart
	case "<|im_end|>":
		return tokImEnd
	case "\n":
		return tokNewline
	}
	h := fnv.New32a()
	h.Write([]byte(word))
	id := 200 + int(h.Sum32()%uint32(vocabSize-200))
	t.mu.Lock()
	if _, ok := t.words[id]; !ok {
		t.words[id] = word
	}
	t.mu.Unlock()
	return id
}

func (t *tokenizer) encode(pieces []string) []int {
	ids := make([]int, len(pieces))
	for i, p := range pieces {
		ids[i] = t.id(p)
	}
	return ids
}

func (t *tokenizer) decode(ids []int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	prevSpecial := true
	for _, id := range ids {
		w, ok := t.words[id]
		if !ok {
			w = vocab[id%len(vocab)]
		}
		special := id == tokImStart || id == tokImEnd || id == tokNewline
		if !special && !prevSpecial {
			b.WriteByte(' ')
		}
		b.WriteString(w)
		prevSpecial = special
	}
	return b.String()
}

// chatMessage is the part of an OpenAI message the simulator reads.
type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// contentText flattens a message content: a string, null, or a list of
// parts of which the text parts count.
func contentText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) == nil {
		var texts []string
		for _, p := range parts {
			texts = append(texts, p.Text)
		}
		return strings.Join(texts, " ")
	}
	return ""
}

// chatPieces renders messages through the ChatML template into tokens:
// <|im_start|> role \n words... <|im_end|> \n per message, then the
// assistant header when addGenerationPrompt.
func chatPieces(msgs []chatMessage, addGenerationPrompt bool) []string {
	var p []string
	for _, m := range msgs {
		p = append(p, "<|im_start|>", m.Role, "\n")
		p = append(p, strings.Fields(contentText(m.Content))...)
		p = append(p, "<|im_end|>", "\n")
	}
	if addGenerationPrompt {
		p = append(p, "<|im_start|>", "assistant", "\n")
	}
	return p
}

// generation is the deterministic output for one prompt: its words and the
// length at which the "model" emits end-of-sequence.
type generation struct {
	seed    uint64
	natural int
}

func newGeneration(prompt []string, index int) generation {
	h := fnv.New64a()
	for _, p := range prompt {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	seed := h.Sum64() + uint64(index)*0x9e3779b97f4a7c15
	return generation{seed: seed, natural: 16 + int(splitmix(seed)%48)}
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// word is the i-th generated word.
func (g generation) word(i int) string {
	return vocab[splitmix(g.seed+uint64(i)+1)%uint64(len(vocab))]
}

// piece is the i-th token as text (words after the first carry their space).
func (g generation) piece(i int, garbage bool) string {
	w := g.word(i)
	if garbage {
		w = "!!"
	}
	if i == 0 {
		return w
	}
	return " " + w
}
