"""The one html page every report file is: a title, the styles and the small sorting script, inline (nothing is
fetched, no server is needed). Callers escape what they put in the body."""

from __future__ import annotations

import html

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1500px;
padding:1rem 1.5rem;color:#1d1d1f;background:#fff}
h1{font-size:1.5rem;margin:.2rem 0 .6rem}h2{font-size:1.2rem;margin:1.6rem 0 .5rem;border-bottom:1px solid #ddd}
h3{font-size:1.02rem;margin:1rem 0 .3rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85rem;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .45rem;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom;min-width:3.5em}
td.missing,td:nth-child(2){white-space:normal}
td:nth-child(2){min-width:9em}table.about td{white-space:normal;text-align:left;min-width:6em}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
thead th{background:#f4f5f7;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e8eaee}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:.7em}
th[aria-sort=descending]::after{content:" \\25BC";font-size:.7em}
td.missing{color:#a33;font-style:italic}tr:hover td{background:#fafafa}
td.within{color:#176d2c}td.outside{color:#b3261e;font-weight:600}
.legend,.note{color:#555;font-size:.85rem}.win{color:#176d2c;font-weight:600}.loss{color:#b3261e;font-weight:600}
img{max-width:100%;height:auto;border:1px solid #eee}code{background:#f4f5f7;padding:0 .2em}
.ci{display:block;position:relative;height:5px;margin-top:3px;background:#eceef2;border-radius:2px}
.ci-range{position:absolute;top:0;bottom:0;background:#8ea6c9;border-radius:2px}
.ci-value{position:absolute;top:-1px;bottom:-1px;width:2px;margin-left:-1px;background:#1d1d1f}
"""

_JS = """
(function(){
function val(td){var v=td.getAttribute('data-sort');if(v===null||v==='')return null;
 if(td.hasAttribute('data-num')){var f=parseFloat(v);return isNaN(f)?null:f;}return v.toLowerCase();}
function sortTable(t,col,dir){var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows),s=dir==='asc'?1:-1;
 rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);
  if(x===null)return y===null?0:1;if(y===null)return -1;return x<y?-s:x>y?s:0;});
 rows.forEach(function(r){tb.appendChild(r);});
 var ths=t.tHead.rows[0].cells;for(var i=0;i<ths.length;i++)ths[i].removeAttribute('aria-sort');
 ths[col].setAttribute('aria-sort',dir==='asc'?'ascending':'descending');t.setAttribute('data-sorted',
 ths[col].getAttribute('data-key')+':'+dir);}
var tables=document.querySelectorAll('table.sortable');
Array.prototype.forEach.call(tables,function(t){var ths=t.tHead.rows[0].cells;
 Array.prototype.forEach.call(ths,function(th,i){function go(){var cur=th.getAttribute('aria-sort');
  var dir=cur?(cur==='ascending'?'desc':'asc'):th.getAttribute('data-dir');sortTable(t,i,dir);}
  th.addEventListener('click',go);th.addEventListener('keydown',function(e){if(e.key==='Enter')go();});});});
var m=/sort=([^&:]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash));
if(m&&tables.length){var t=tables[0],ths=t.tHead.rows[0].cells;for(var i=0;i<ths.length;i++)
 if(ths[i].getAttribute('data-key')===m[1])sortTable(t,i,m[2]||ths[i].getAttribute('data-dir'));}
document.body.setAttribute('data-js','ready');
})();
"""


def breakable(text: str) -> str:
    """`text` escaped, with a line-break opportunity after each / : _ = (a long task name or path in a column
    header wraps there, not at the page's edge)."""
    out = html.escape(text)
    for c in "/:_=":
        out = out.replace(c, c + "<wbr>")
    return out


def html_page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{body}\n<script>{_JS}</script>\n</body></html>\n"
    )
