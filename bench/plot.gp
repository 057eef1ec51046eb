#!/usr/bin/env -S gnuplot -c
# Renders docs/perf/*.csv (from bench/scaling.sh) as PNG plots.
set terminal pngcairo size 800,480 font ",11"
set datafile separator " "
set key top left
set grid
cd "docs/perf"

set output "clients.png"
set title "64-byte echo, 4 children: jobs/s by closed-loop clients"
set xlabel "clients (each one job at a time)"; set ylabel "jobs/s"; set logscale x 2
plot "clients.csv" using 1:($2==1?$3:1/0) with linespoints title "prefetch 1", \
     "" using 1:($2==8?$3:1/0) with linespoints title "prefetch 8"

set output "pipeline.png"
set title "64-byte echo, 4 children, 4 connections: jobs/s by jobs in flight per connection"
set xlabel "pipeline depth"; set logscale x 10
plot "pipeline.csv" using 1:($2==1?$3:1/0) with linespoints title "prefetch 1", \
     "" using 1:($2==64?$3:1/0) with linespoints title "prefetch 64"

set output "size.png"
set title "echo, 4 children, 4x4 in flight: MB/s by payload size"
set xlabel "payload bytes"; set ylabel "MB/s (input)"; set logscale x 2
plot "size.csv" using 1:5 with linespoints title "MB/s"

set output "rss.png"
unset logscale x
set title "master RSS over 1,000,000 jobs"
set xlabel "jobs"; set ylabel "RSS (kB)"; set yrange [0:*]
plot "rss.csv" using 1:2 with linespoints title "master RSS"
