package jsonreq

import (
	"io"
	"net/http"
	"testing"
)

func TestNew(t *testing.T) {
	req, err := New(t.Context(), http.MethodPost, "http://x/p", map[string]int{"a": 1})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(req.Body)
	if string(b) != `{"a":1}` || req.Header.Get("Content-Type") != "application/json" || req.Method != http.MethodPost {
		t.Errorf("request %s %q %q", req.Method, b, req.Header.Get("Content-Type"))
	}
	req, err = New(t.Context(), http.MethodGet, "http://x/p", nil)
	if err != nil {
		t.Fatal(err)
	}
	if req.Body != nil || req.Header.Get("Content-Type") != "" {
		t.Errorf("a request without a body has body %v, Content-Type %q", req.Body, req.Header.Get("Content-Type"))
	}
	if _, err := New(t.Context(), http.MethodPost, "http://x/p", func() {}); err == nil {
		t.Error("an unencodable body was accepted")
	}
}
