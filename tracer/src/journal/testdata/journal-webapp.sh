#!/bin/sh
# The fixture's scenario: record, a web app turns forwarding off, a cleanup flushes Docker's
# nat chain, the recorder stops, forwarding is turned back on, the recorder starts again.
/work/main/target/release/droptrace record --journal /tmp/jfix --netns dt-journal >/dev/null 2>&1 & P=$!
sleep 3; /tmp/jfixbin/run-webapp; /tmp/jfixbin/fw-cleanup; sleep 2; kill $P; wait $P
ip netns exec dt-journal sysctl -qw net.ipv4.ip_forward=1
/work/main/target/release/droptrace record --journal /tmp/jfix --netns dt-journal >/dev/null 2>&1 & P=$!
sleep 3; kill $P; wait $P
# /tmp/jfixbin/run-webapp:
#   #!/bin/sh
#   ip netns exec dt-journal /tmp/jfixbin/webapp
# /tmp/jfixbin/webapp:
#   #!/bin/sh
#   /tmp/jfixbin/network-restart
# /tmp/jfixbin/network-restart:
#   #!/bin/sh
#   sysctl -w net.ipv4.ip_forward=0 >/dev/null
# /tmp/jfixbin/fw-cleanup:
#   #!/bin/sh
#   ip netns exec dt-journal iptables-nft -t nat -F DOCKER
# Run as root, after `ip netns add dt-journal` and Docker's nat chain with a DNAT rule for
# port 5000 added there with iptables-nft, as: env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin scenario
# The journal it wrote, /tmp/jfix/changes-00000001.jsonl, is journal-webapp.jsonl.
