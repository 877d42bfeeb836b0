-- wrk script: HTTP/1.1 pipelining. Every write carries DEPTH requests
-- (default 16) for the URL's path; wrk counts each response separately.
--
--   wrk -t1 -c64 -d10s --latency -s scripts/pipeline.lua http://127.0.0.1:8080/plaintext -- 16
--
-- Caveat: wrk 4.1 times a pipelined batch from the write of the batch, so its
-- latency percentiles are not per-request latencies. Use Little's law instead:
-- mean batch latency = connections * DEPTH / requests_per_second.

local req

init = function(args)
   local depth = tonumber(args[1]) or 16
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format(nil, wrk.path)
   end
   req = table.concat(r)
end

request = function()
   return req
end
