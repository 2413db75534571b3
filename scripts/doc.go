// Package scripts holds the project's shell scripts (scripts/*.sh); its
// tests run them against fake system commands.
package scripts
