#!/bin/bash
# The install test's streaming client, run inside the container (bash and
# coreutils are all a minimal Debian has): it streams chat completions
# through vagentd one after another, each on a new connection, until the file
# STOP exists, and appends one line per stream to LOG:
#
#   START_MS END_MS OUTCOME
#
# OUTCOME is done (the stream delivered data: [DONE] and no error event),
# refused (no connection could be made) or cut (anything else: an error
# event, or an end without [DONE]).
#
#   stream-client.sh HOST PORT MODEL LOG STOP
set -u
host=$1 port=$2 model=$3 log=$4 stop=$5
# Long enough that an upgrade's restart of vagentd lands inside a stream.
body='{"model":"'$model'","messages":[{"role":"user","content":"Write a long story."}],"max_tokens":200,"ignore_eos":true,"stream":true}'
while [ ! -e "$stop" ]; do
	start=$(date +%s%3N)
	outcome=refused
	{
		printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
			"$host" "$port" "${#body}" "$body" >&3
		out=$(timeout 120 cat <&3)
		if grep -q '^data: \[DONE\]' <<<"$out" && ! grep -q '^data: {"error":' <<<"$out"; then
			outcome=done
		else
			outcome=cut
		fi
	} 3<>"/dev/tcp/$host/$port" 2>/dev/null
	echo "$start $(date +%s%3N) $outcome" >>"$log"
done
