// Package jsonreq builds the HTTP requests vagent's small JSON clients send
// (the control socket's and the engines'), so both encode bodies alike.
package jsonreq

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
)

// New is a request for url whose body, when not nil, is body encoded as
// JSON with its Content-Type set.
func New(ctx context.Context, method, url string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}
