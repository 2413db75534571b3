package config

import (
	"reflect"
	"strings"
)

// MainField reports whether field, a TOML key path such as "paths.hf_home"
// or "engine.env", is a key of the main file rather than of an agent's, so
// that a problem with its value is blamed on the file that sets it.
func MainField(field string) bool {
	section, _, dotted := strings.Cut(field, ".")
	if !dotted {
		return false
	}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Type.Kind() != reflect.Struct {
			continue
		}
		// The decoder matches untagged fields case-insensitively.
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if name == section {
			return true
		}
	}
	return false
}
