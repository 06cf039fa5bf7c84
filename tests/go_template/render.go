// Renders an Ollama TEMPLATE the way Ollama's template.Execute does for chat requests (template/template.go:
// collate the messages, System = every system message joined by "\n\n", Messages keep them), so that the
// tests can compare the Go rendering of hqq2gguf's translated templates with the Jinja original.
//
// Build: go build -o render render.go (stdlib only). Input on stdin: {"template": "...", "messages":
// [{"role": "...", "content": "..."}]}; output: the rendered prompt, nothing else.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type request struct {
	Template string              `json:"template"`
	Messages []map[string]string `json:"messages"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(3)
	}
	var system []string
	var messages []map[string]any
	for _, m := range req.Messages {
		if m["role"] == "system" {
			system = append(system, m["content"])
		}
		if n := len(messages); n > 0 && messages[n-1]["Role"] == m["role"] {
			messages[n-1]["Content"] = messages[n-1]["Content"].(string) + "\n\n" + m["content"]
			continue
		}
		messages = append(messages, map[string]any{"Role": m["role"], "Content": m["content"]})
	}
	data := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": messages, "Response": ""}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, "execute:", err)
		os.Exit(4)
	}
}
