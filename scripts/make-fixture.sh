#!/usr/bin/env bash
# Regenerates fixtures/speech-60s.mp4 and fixtures/speech-60s.json.
#
# The MP4 is a 60 s test clip for the dubbing pipeline and the sync meter
# (crates/syncmeter):
#   video  H.264 (libx264, main profile, yuv420p, no B-frames), 480x270, 25 fps,
#          an IDR keyframe exactly every second (every 25th frame), testsrc2 pattern;
#   audio  AAC-LC (ffmpeg's native encoder), 48 kHz stereo, 128 kb/s;
#          English news/sports sentences spoken by espeak-ng, separated by pauses;
#   sync markers at MARKERS_S: a white full-frame flash on the two frames starting at
#          the marker time, and a 100 ms 1 kHz beep (amplitude 0.5) starting at exactly
#          the same time. Markers lie in pauses: no speech within
#          [marker - PRE_GAP_S, marker + POST_GAP_S].
# The AAC encoder priming (1024 samples) is compensated by the MP4 edit list that
# ffmpeg writes, so a qtdemux + avdec_aac decode puts each beep at its marker time.
#
# Deterministic as far as the tools are: the same ffmpeg/x264/espeak-ng/sox versions
# give the same bytes (single-threaded x264, bitexact muxing, no dither).
#
# Usage: scripts/make-fixture.sh [OUTDIR]   (default: fixtures/ next to scripts/)
# Needs: ffmpeg (with libx264), ffprobe, espeak-ng, sox, soxi, awk.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUTDIR="${1:-$ROOT/fixtures}"
NAME="speech-60s"

DURATION_S=60
FPS=25
WIDTH=480
HEIGHT=270
RATE=48000
MARKERS_S=(5 14 23 32 41 50)
FLASH_FRAMES=2
BEEP_S=0.1
BEEP_HZ=1000
BEEP_AMP=0.5
PRE_GAP_S=0.5   # no speech in the last PRE_GAP_S before a marker
POST_GAP_S=0.6  # nor in the first POST_GAP_S after it (the beep lasts 0.1 s)
PAUSE_S=0.7     # pause between two sentences of the same block
LEAD_IN_S=0.4   # silence at the very start
TAIL_S=0.5      # silence at the very end
VOICE=en-us
WPM=170

for tool in ffmpeg ffprobe espeak-ng sox soxi awk; do
  command -v "$tool" >/dev/null 2>&1 || { echo "make-fixture: '$tool' not found" >&2; exit 1; }
done

# Sentences, one block per interval between markers (block 0 before the first marker,
# block i after marker i). Sentences of a block are separated by PAUSE_S.
BLOCKS=(
  "Good evening, and welcome to the six o'clock news from the city."
  "The city council voted tonight to widen the harbour bridge.|Work is expected to start in the spring and last until autumn."
  "Heavy rain caused long delays on the northern railway line this afternoon.|Engineers say the tracks should reopen early tomorrow morning."
  "And now to sport, where the cup final is already under way in the capital.|The home side kicks off towards the river end of the ground."
  "A long ball over the top, and the striker is clean through on goal!|He shoots, he scores, and what a wonderful goal that is!"
  "The visitors are pressing very hard for an equaliser late in the game.|A corner kick comes in, and it is cleared by the goalkeeper."
  "The referee blows the final whistle, and the home fans are on their feet.|That is all from us tonight.|Thank you for watching, and good night."
)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

n_markers=${#MARKERS_S[@]}
if [ "${#BLOCKS[@]}" -ne $((n_markers + 1)) ]; then
  echo "make-fixture: need $((n_markers + 1)) sentence blocks, have ${#BLOCKS[@]}" >&2
  exit 1
fi

# Marker times must be whole frames.
for m in "${MARKERS_S[@]}"; do
  awk -v m="$m" -v f="$FPS" 'BEGIN { x = m * f; if (x != int(x)) exit 1 }' \
    || { echo "make-fixture: marker $m s is not a multiple of the frame duration" >&2; exit 1; }
done

# --- audio -------------------------------------------------------------------------
# Timeline entries: "start_sample wav_file" (sorted later); speech windows in seconds.
timeline="$WORK/timeline.txt"
: >"$timeline"
windows=()
sentences=()
clip=0
for b in $(seq 0 $n_markers); do
  if [ "$b" -eq 0 ]; then
    lo="$LEAD_IN_S"
  else
    lo=$(awk -v m="${MARKERS_S[$((b - 1))]}" -v g="$POST_GAP_S" 'BEGIN { printf "%.6f", m + g }')
  fi
  if [ "$b" -eq "$n_markers" ]; then
    hi=$(awk -v d="$DURATION_S" -v g="$TAIL_S" 'BEGIN { printf "%.6f", d - g }')
  else
    hi=$(awk -v m="${MARKERS_S[$b]}" -v g="$PRE_GAP_S" 'BEGIN { printf "%.6f", m - g }')
  fi
  pos_samples=$(awk -v t="$lo" -v r="$RATE" 'BEGIN { printf "%d", t * r + 0.5 }')
  IFS='|' read -r -a sentences <<<"${BLOCKS[$b]}"
  first=1
  for s in "${sentences[@]}"; do
    clip=$((clip + 1))
    raw="$WORK/raw$clip.wav"
    wav="$WORK/clip$clip.wav"
    espeak-ng -v "$VOICE" -s "$WPM" -w "$raw" "$s"
    # Trim leading/trailing silence, resample to 48 kHz, peak-normalise to -3 dBFS.
    sox -D "$raw" -b 16 "$wav" \
      silence 1 0.005 0.3% reverse silence 1 0.005 0.3% reverse \
      rate -v "$RATE" gain -n -3
    len=$(soxi -s "$wav")
    if [ "$first" -eq 0 ]; then
      pos_samples=$(awk -v p="$pos_samples" -v g="$PAUSE_S" -v r="$RATE" 'BEGIN { printf "%d", p + g * r + 0.5 }')
    fi
    first=0
    echo "$pos_samples $wav" >>"$timeline"
    start_s=$(awk -v p="$pos_samples" -v r="$RATE" 'BEGIN { printf "%.3f", p / r }')
    end_s=$(awk -v p="$pos_samples" -v l="$len" -v r="$RATE" 'BEGIN { printf "%.3f", (p + l) / r }')
    windows+=("[$start_s,$end_s]")
    text_json=${s//\\/\\\\}
    text_json=${text_json//\"/\\\"}
    sentences+=("    {\"start_s\": $start_s, \"end_s\": $end_s, \"text\": \"$text_json\"}")
    pos_samples=$((pos_samples + len))
  done
  if awk -v p="$pos_samples" -v r="$RATE" -v h="$hi" 'BEGIN { exit !(p / r > h) }'; then
    echo "make-fixture: sentence block $b ends at $(awk -v p="$pos_samples" -v r="$RATE" 'BEGIN{print p/r}') s, past its limit $hi s; shorten it" >&2
    exit 1
  fi
done

# Beeps: sample-exact, starting at phase 0.
beep="$WORK/beep.wav"
sox -D -n -r "$RATE" -c 1 -b 16 "$beep" synth "$BEEP_S" sine "$BEEP_HZ" vol "$BEEP_AMP"
for m in "${MARKERS_S[@]}"; do
  echo "$(awk -v m="$m" -v r="$RATE" 'BEGIN { printf "%d", m * r + 0.5 }') $beep" >>"$timeline"
done

# Concatenate: silence up to each entry's start, then the entry, then silence to the end.
parts=()
cursor=0
i=0
while read -r start file; do
  i=$((i + 1))
  gap=$((start - cursor))
  if [ "$gap" -lt 0 ]; then echo "make-fixture: overlapping audio at sample $start" >&2; exit 1; fi
  if [ "$gap" -gt 0 ]; then
    sox -D -n -r "$RATE" -c 1 -b 16 "$WORK/sil$i.wav" trim 0 "${gap}s"
    parts+=("$WORK/sil$i.wav")
  fi
  parts+=("$file")
  cursor=$((start + $(soxi -s "$file")))
done < <(sort -n "$timeline")
total=$((DURATION_S * RATE))
sox -D -n -r "$RATE" -c 1 -b 16 "$WORK/sil_end.wav" trim 0 "$((total - cursor))s"
parts+=("$WORK/sil_end.wav")
sox -D "${parts[@]}" -b 16 -c 2 "$WORK/audio.wav" remix 1 1
if [ "$(soxi -s "$WORK/audio.wav")" -ne "$total" ]; then
  echo "make-fixture: audio has $(soxi -s "$WORK/audio.wav") samples, expected $total" >&2
  exit 1
fi

# --- video + mux -------------------------------------------------------------------
enable=""
for m in "${MARKERS_S[@]}"; do
  f=$(awk -v m="$m" -v r="$FPS" 'BEGIN { printf "%d", m * r + 0.5 }')
  enable+="${enable:++}between(n\\,$f\\,$((f + FLASH_FRAMES - 1)))"
done

mkdir -p "$OUTDIR"
mp4="$OUTDIR/$NAME.mp4"
ffmpeg -nostdin -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=${WIDTH}x${HEIGHT}:rate=${FPS}:duration=${DURATION_S}" \
  -i "$WORK/audio.wav" \
  -filter_complex "[0:v]format=yuv420p,drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='${enable}'[v]" \
  -map '[v]' -map 1:a \
  -c:v libx264 -preset medium -profile:v main -pix_fmt yuv420p -crf 30 -maxrate 200k -bufsize 400k \
  -g "$FPS" -keyint_min "$FPS" -sc_threshold 0 -bf 0 -threads 1 \
  -c:a aac -b:a 128k -ar "$RATE" -ac 2 \
  -t "$DURATION_S" -map_metadata -1 -fflags +bitexact -flags:a +bitexact \
  -movflags +faststart \
  "$mp4"

# --- description -------------------------------------------------------------------
probe() { ffprobe -v error -select_streams "$1" -show_entries "stream=$2" -of default=nw=1:nk=1 "$mp4" | head -n1; }
v_codec=$(probe v:0 codec_name)
v_profile=$(probe v:0 profile)
v_pix=$(probe v:0 pix_fmt)
v_frames=$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of default=nw=1:nk=1 "$mp4")
a_codec=$(probe a:0 codec_name)
a_profile=$(probe a:0 profile)
a_rate=$(probe a:0 sample_rate)
a_channels=$(probe a:0 channels)
a_bitrate=$(probe a:0 bit_rate)
v_bitrate=$(probe v:0 bit_rate)
size=$(stat -c %s "$mp4")

markers_json=$(printf '%s\n' "${MARKERS_S[@]}" | awk '{ printf "%s%.3f", (NR > 1 ? "," : ""), $1 }')
windows_json=$(IFS=,; echo "${windows[*]}")
sentences_json=$(printf '%s,\n' "${sentences[@]}" | sed '$ s/,$//')

cat >"$OUTDIR/$NAME.json" <<EOF
{
  "file": "$NAME.mp4",
  "generator": "scripts/make-fixture.sh",
  "duration_s": $DURATION_S,
  "fps": $FPS,
  "markers_s": [$markers_json],
  "marker": {
    "flash_frames": $FLASH_FRAMES,
    "flash": "white full frame on the frames whose PTS is the marker time (and the next one)",
    "beep_hz": $BEEP_HZ,
    "beep_s": $BEEP_S,
    "beep_amplitude": $BEEP_AMP
  },
  "speech_windows_s": [$windows_json],
  "sentences": [
$sentences_json
  ],
  "video": {
    "codec": "$v_codec",
    "profile": "$v_profile",
    "pix_fmt": "$v_pix",
    "width": $WIDTH,
    "height": $HEIGHT,
    "fps": $FPS,
    "frames": $v_frames,
    "keyframe_interval_frames": $FPS,
    "keyframe_interval_s": 1.0,
    "b_frames": 0,
    "bit_rate": $v_bitrate
  },
  "audio": {
    "codec": "$a_codec",
    "profile": "$a_profile",
    "sample_rate": $a_rate,
    "channels": $a_channels,
    "bit_rate": $a_bitrate,
    "encoder_priming_samples": 1024,
    "priming_compensated_by": "mp4 edit list"
  },
  "size_bytes": $size
}
EOF

echo "wrote $mp4 ($size bytes) and $OUTDIR/$NAME.json"
