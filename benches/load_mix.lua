-- wrk request mix for benches/load.sh: typical browser and API traffic (page views, static
-- assets, searches, a form post, a JSON call) with 5% attacks, cycled in a fixed order so
-- every target sees the same mix.
local ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
local base = {
  ["Host"] = "shop.example.com",
  ["User-Agent"] = ua,
  ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
  ["Accept-Language"] = "en-GB,en;q=0.9",
  ["Cookie"] = "session=9f2c1e7a4b5d; theme=dark; consent=1",
  ["Referer"] = "https://shop.example.com/catalog?page=2",
}
local function with(extra)
  local h = {}
  for k, v in pairs(base) do h[k] = v end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end
local mix = {
  {"GET", "/", nil, nil},
  {"GET", "/catalog/shoes/running?size=42&color=blue&sort=price_asc&page=3", nil, nil},
  {"GET", "/static/css/site.min.css?v=3.2.1", nil, nil},
  {"GET", "/static/js/app.4f9c2b.js", nil, nil},
  {"GET", "/product/8812-trail-runner?ref=home_carousel", nil, nil},
  {"GET", "/search?q=waterproof+hiking+boots&page=1", nil, nil},
  {"POST", "/account/login", {["Content-Type"] = "application/x-www-form-urlencoded"},
    "username=alice%40example.com&password=correct+horse+battery&remember=on"},
  {"POST", "/api/v2/cart/items", {["Content-Type"] = "application/json"},
    '{"sku":"SHOE-42-BLU","quantity":2,"options":{"gift":false,"note":"Happy birthday!"}}'},
  {"GET", "/images/products/8812/large.jpg", nil, nil},
  {"GET", "/api/v2/recommendations?user=1842&limit=8", nil, nil},
  {"GET", "/catalog/jackets?brand=north&price_min=50&price_max=200", nil, nil},
  {"GET", "/help/shipping", nil, nil},
  {"GET", "/blog/2024/10/choosing-running-shoes", nil, nil},
  {"GET", "/static/fonts/inter.woff2", nil, nil},
  {"GET", "/account/orders?page=1", nil, nil},
  {"GET", "/search?q=red+dress&sort=newest", nil, nil},
  {"GET", "/catalog/socks", nil, nil},
  {"GET", "/static/img/logo.svg", nil, nil},
  {"GET", "/api/v2/stock?sku=SHOE-42-BLU", nil, nil},
  {"GET", "/search?q=1%27%20UNION%20SELECT%20username%2Cpassword%20FROM%20users--", nil, nil},
}
local reqs = {}
for i, m in ipairs(mix) do
  reqs[i] = wrk.format(m[1], m[2], with(m[3]), m[4])
end
local n = 0
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
