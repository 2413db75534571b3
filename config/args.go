package config

import (
	"fmt"
	"regexp"
	"strconv"
)

var (
	// wholeNegativeRE is the one shape of word starting with '-' that every
	// vllm serve reads as a value.
	wholeNegativeRE = regexp.MustCompile(`^-[0-9]+$`)
	// numberLikeRE is what Python 3.14's argparse reads as a negative
	// number (re.match(r'-\.?\d')): anything that starts like one.
	numberLikeRE = regexp.MustCompile(`^-\.?[0-9]`)
)

// IsOption reports whether vllm serve reads word as an option rather than
// as a value. argparse takes a word that starts with '-' for a value only
// when it looks like a negative number, and what looks like one depends on
// the Python version: r'^-\d+$|^-\d*\.\d+$' up to 3.12 (vLLM 0.12 to 0.18
// run on 3.10 to 3.13), more in later releases ("-1e5", "-1_000"), and
// never "-inf" or "-nan". On top of that vLLM's own FlexibleArgumentParser
// reads any such word holding a '.' as a dotted option ("-0.5" becomes
// {"5": NEXT} of an option "-0"). So a whole negative number ("-1") is the
// only '-' word every engine takes as a value; a lone "-" is a value too.
func IsOption(word string) bool {
	return len(word) > 1 && word[0] == '-' && !wholeNegativeRE.MatchString(word)
}

// CheckExtraArg refuses entry i of args when it is a number that vllm
// serve would read as an option (see IsOption): the command would fail at
// start with "expected one argument", or pass a mangled value. Attached to
// its flag with '=' it reaches argparse as a value on every version.
func CheckExtraArg(args []string, i int) error {
	w := args[i]
	if !IsOption(w) {
		return nil
	}
	if _, err := strconv.ParseFloat(w, 64); err != nil && !numberLikeRE.MatchString(w) {
		return nil
	}
	flag := "--FLAG"
	if i > 0 && IsOption(args[i-1]) {
		flag = args[i-1]
	}
	return fmt.Errorf("entry %d %q: vllm serve reads a value that starts with '-' as an option unless it is a whole number such as -1; attach it to its flag instead: %q",
		i+1, w, flag+"="+w)
}
