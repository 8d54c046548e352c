"""The web console: static HTML, CSS and JavaScript inside the package, served by the app itself at `/` and
`/ui/...`. Plain ES modules with no build step and no framework: nothing to compile, nothing fetched from another
origin, every line readable as shipped. The pages call the public API (/v1) and the admin API (/models,
/admin/stats) like any client; the files themselves need no key."""
