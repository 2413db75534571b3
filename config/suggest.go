package config

import "strings"

// suggest is the known key closest to an unknown one, for a "did you
// mean" hint: the same key in another table ("listen" for
// "gateway.listen"), else the key within a few edits of it (a typo); ""
// when nothing is close.
func suggest(unknown string, known []string) string {
	last := unknown[strings.LastIndexByte(unknown, '.')+1:]
	best, bestDist := "", -1
	for _, k := range known {
		if k == unknown {
			continue
		}
		klast := k[strings.LastIndexByte(k, '.')+1:]
		d := editDistance(unknown, k)
		if klast == last {
			d = min(d, 1)
		}
		if bestDist < 0 || d < bestDist {
			best, bestDist = k, d
		}
	}
	// A few edits for a short key, more for a long one, never so many
	// that an unrelated key is offered.
	if bestDist < 0 || bestDist > max(1, min(3, len(last)/3)) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, with a swap of two
// neighbouring letters counting as one edit (the commonest typo).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

// knownKeys are the keys of the main file (main) or of an agent file.
func knownKeys(main bool) []string {
	m, a, err := Reference()
	if err != nil {
		return nil // the reference test fails on this
	}
	keys := a
	if main {
		keys = m
	}
	var out []string
	seen := map[string]bool{}
	for _, k := range keys {
		// Tables too, so that a misspelt [section] is recognised.
		for i, c := range k.Key {
			if c == '.' && !seen[k.Key[:i]] {
				seen[k.Key[:i]] = true
				out = append(out, k.Key[:i])
			}
		}
		out = append(out, k.Key)
	}
	return out
}
